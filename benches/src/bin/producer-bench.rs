//! Client producer benchmark: one `shardlog_wire::client::Producer`
//! sending fixed-size records (100 B by default) to a one-partition topic
//! with client-side batching and durable acks, closed loop with a bounded
//! window of unacknowledged records. Reports records/s and the
//! send-to-ack latency of every record (p50/p99/p999/max, hdrhistogram).
//!
//! Run against a server started separately, pinned apart:
//! ```text
//! taskset -c 0 target/release/shardlog --shards 1 --no-pin --listen 127.0.0.1:7411 \
//!     --data-dir /tmp/pb --metrics-listen off &
//! target/release/producer-bench --addr 127.0.0.1:7411 --cpu 1 --window 5000
//! ```

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use shardlog_wire::client::{Client, ClientConfig, DeliveryFuture, GlommioRuntime, ProducerConfig};

/// Parsed command line.
#[derive(Debug, Clone)]
struct Args {
    addr: SocketAddr,
    cpu: Option<usize>,
    topic: String,
    record_bytes: usize,
    batch_records: usize,
    linger_ms: u64,
    /// Unacknowledged records at most (the producer's buffer bound).
    window: usize,
    warmup_secs: u64,
    run_secs: u64,
}

fn usage() -> ! {
    eprintln!(
        "usage: producer-bench --addr HOST:PORT [--cpu N] [--topic NAME] [--record-bytes 100] \
         [--batch-records 1000] [--linger-ms 1] [--window 5000] [--warmup-secs 2] [--run-secs 10]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut args = Args {
        addr: "127.0.0.1:7411".parse().expect("default addr"),
        cpu: None,
        topic: "producer-bench".into(),
        record_bytes: 100,
        batch_records: 1000,
        linger_ms: 1,
        window: 5000,
        warmup_secs: 2,
        run_secs: 10,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| usage());
        let number = || value.parse::<u64>().unwrap_or_else(|_| usage());
        match flag.as_str() {
            "--addr" => args.addr = value.parse().unwrap_or_else(|_| usage()),
            "--cpu" => args.cpu = Some(number() as usize),
            "--topic" => args.topic = value.clone(),
            "--record-bytes" => args.record_bytes = number() as usize,
            "--batch-records" => args.batch_records = number() as usize,
            "--linger-ms" => args.linger_ms = number(),
            "--window" => args.window = number() as usize,
            "--warmup-secs" => args.warmup_secs = number(),
            "--run-secs" => args.run_secs = number(),
            _ => usage(),
        }
    }
    args
}

/// One measured phase's results.
struct Phase {
    records: u64,
    elapsed: Duration,
    latency_us: Histogram<u64>,
}

fn main() {
    let args = parse_args();
    let placement = args.cpu.map_or(Placement::Unbound, Placement::Fixed);
    let report = LocalExecutorBuilder::new(placement)
        .spawn(move || run(args))
        .expect("executor")
        .join()
        .expect("executor thread");
    println!("{report}");
}

async fn run(args: Args) -> String {
    let client = Client::new(GlommioRuntime, args.addr, ClientConfig::default()).expect("client");
    match client.admin().create_topic(&args.topic, 1).await {
        Ok(_) => {}
        Err(error)
            if error
                .status()
                .is_some_and(|s| s.code() == shardlog_wire::Code::ALREADY_EXISTS) => {}
        Err(error) => panic!("create topic: {error}"),
    }
    let config = ProducerConfig {
        batch_records_max: args.batch_records,
        batch_bytes_max: 2 << 20,
        linger: Duration::from_millis(args.linger_ms),
        buffer_records_max: args.window.max(args.batch_records),
        ..ProducerConfig::default()
    };
    let producer = client.producer(config).expect("producer");
    let value = Bytes::from(vec![0x5a; args.record_bytes]);
    let warmup = measure(
        &producer,
        &args,
        &value,
        Duration::from_secs(args.warmup_secs),
    )
    .await;
    drop(warmup);
    let phase = measure(&producer, &args, &value, Duration::from_secs(args.run_secs)).await;
    producer.close().await;
    let h = &phase.latency_us;
    format!(
        "producer-bench record_bytes={} batch_records={} linger_ms={} window={}\n\
         records={} elapsed_s={:.2} records_per_s={:.0} MB_per_s={:.1}\n\
         send_to_ack_us p50={} p99={} p999={} max={} (stats {:?})",
        args.record_bytes,
        args.batch_records,
        args.linger_ms,
        args.window,
        phase.records,
        phase.elapsed.as_secs_f64(),
        phase.records as f64 / phase.elapsed.as_secs_f64(),
        (phase.records as f64 * args.record_bytes as f64) / phase.elapsed.as_secs_f64() / 1e6,
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max(),
        producer.stats(),
    )
}

/// Sends for `duration`; a collector task awaits the deliveries in send
/// order and records each one's send-to-ack latency.
async fn measure(
    producer: &shardlog_wire::client::Producer<GlommioRuntime>,
    args: &Args,
    value: &Bytes,
    duration: Duration,
) -> Phase {
    let (tx, rx) =
        glommio::channels::local_channel::new_bounded::<(Instant, DeliveryFuture)>(args.window);
    let collector = glommio::spawn_local(async move {
        let mut latency_us =
            Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
        let mut records = 0u64;
        while let Some((sent_at, delivery)) = rx.recv().await {
            delivery.await.expect("acknowledged");
            let micros = sent_at.elapsed().as_micros().max(1) as u64;
            latency_us.saturating_record(micros);
            records += 1;
        }
        (records, latency_us)
    })
    .detach();
    let started = Instant::now();
    while started.elapsed() < duration {
        for _ in 0..256 {
            let sent_at = Instant::now();
            let delivery = producer
                .send(&args.topic, None, value.clone())
                .await
                .expect("send");
            if tx.send((sent_at, delivery)).await.is_err() {
                break;
            }
        }
    }
    drop(tx);
    let (records, latency_us) = collector.await.expect("collector");
    Phase {
        records,
        elapsed: started.elapsed(),
        latency_us,
    }
}
