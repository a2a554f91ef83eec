//! Failover of the Rust client library's producer: the server is SIGKILLed
//! and restarted (same address, same data dir) while a producer sends;
//! every acknowledged record must be stored exactly once, and buffered
//! records must survive the reconnect and be resent in order.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::{LocalExecutorBuilder, Placement};
use shardlog_wire::client::{
    Backoff, Client, ClientConfig, GlommioRuntime, ProducerConfig, RetryPolicy, StartAt,
};

/// How long a server gets to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const PARTITIONS: u32 = 2;
const RECORDS: u32 = 30_000;
/// Server kills during the run, each after this many more acknowledgements.
const KILLS: u64 = 2;
const ACKS_BETWEEN_KILLS: u64 = 8_000;

/// A `shardlog` process on a fixed address, so a restart comes back where
/// the client expects it (the shared harness picks a new port each start).
struct FixedServer {
    child: Option<Child>,
    addr: SocketAddr,
}

impl FixedServer {
    fn start(addr: SocketAddr, data_dir: &Path) -> FixedServer {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            // The port can stay busy for a moment after a kill: retry.
            match FixedServer::try_start(addr, data_dir) {
                Some(server) => return server,
                None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
                None => panic!("server did not start on {addr}"),
            }
        }
    }

    fn try_start(addr: SocketAddr, data_dir: &Path) -> Option<FixedServer> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_shardlog"))
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--shards", "1", "--no-pin", "--metrics-listen", "off"])
            .env_remove("SHARDLOG_LISTEN")
            .env_remove("SHARDLOG_DATA_DIR")
            .env("SHARDLOG_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn shardlog");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        let listening = BufReader::new(stdout).read_line(&mut line).is_ok()
            && line.starts_with("shardlog listening on ");
        if !listening {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        Some(FixedServer {
            child: Some(child),
            addr,
        })
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL: nothing gets synced on the way out
            let _ = child.wait();
        }
    }
}

impl Drop for FixedServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local addr")
}

fn resilient_client(addr: SocketAddr) -> Client<GlommioRuntime> {
    let config = ClientConfig {
        request_timeout: Duration::from_secs(5),
        retry: RetryPolicy {
            backoff: Backoff {
                base: Duration::from_millis(20),
                ..Backoff::default()
            },
            retries_max: 100,
            deadline: Duration::from_secs(60),
        },
        ..ClientConfig::default()
    };
    Client::new(GlommioRuntime, addr, config).expect("client")
}

fn run<T: Send + 'static, Fut: Future<Output = T> + 'static>(
    body: impl FnOnce() -> Fut + Send + 'static,
) -> T {
    LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(body)
        .expect("executor")
        .join()
        .expect("executor thread")
}

#[test]
fn client_failover_server_killed_mid_send_stores_every_ack_exactly_once() {
    let temp = tempfile::tempdir().expect("temp dir");
    let data_dir = temp.path().join("data");
    let addr = free_port();
    let mut server = FixedServer::start(addr, &data_dir);
    assert_eq!(server.addr, addr);
    run(move || async move {
        let client = resilient_client(addr);
        client
            .admin()
            .create_topic("fo", PARTITIONS)
            .await
            .expect("create");
    });

    let acked = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let killer = {
        let (acked, done, data_dir) = (acked.clone(), done.clone(), data_dir.clone());
        std::thread::spawn(move || {
            let mut kills = 0;
            while kills < KILLS && !done.load(Ordering::Acquire) {
                if acked.load(Ordering::Acquire) >= (kills + 1) * ACKS_BETWEEN_KILLS {
                    server.kill();
                    std::thread::sleep(Duration::from_millis(200));
                    server = FixedServer::start(addr, &data_dir);
                    kills += 1;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            (server, kills)
        })
    };

    let producer_acked = acked.clone();
    let acks = run(move || async move {
        let client = resilient_client(addr);
        let config = ProducerConfig {
            batch_records_max: 100,
            linger: Duration::from_millis(2),
            buffer_records_max: 2_000,
            delivery_timeout: Duration::from_secs(60),
            ..ProducerConfig::default()
        };
        let producer = client.producer(config).expect("producer");
        let mut pending = std::collections::VecDeque::new();
        let mut acks = Vec::new();
        for i in 0..RECORDS {
            let value = Bytes::from(i.to_le_bytes().to_vec());
            pending.push_back((i, producer.send("fo", None, value).await.expect("send")));
            // Await the oldest once the window is full: keeps the send rate
            // tied to the acknowledgements the killer counts.
            while pending.len() > 1_000 {
                let (value, delivery) = pending.pop_front().expect("pending");
                acks.push((value, delivery.await.expect("every record is acknowledged")));
                producer_acked.fetch_add(1, Ordering::Release);
            }
        }
        for (value, delivery) in pending {
            acks.push((value, delivery.await.expect("every record is acknowledged")));
        }
        producer.close().await;
        let stats = producer.stats();
        eprintln!("failover producer stats: {stats:?}");
        assert!(
            stats.stream_breaks >= KILLS,
            "every kill broke the stream: {stats:?}"
        );
        assert_eq!(stats.batches_failed, 0);
        acks
    });
    done.store(true, Ordering::Release);
    let (server, kills) = killer.join().expect("killer thread");
    assert_eq!(kills, KILLS, "the server was killed mid-send");
    assert_eq!(acks.len(), RECORDS as usize);

    let stored = run(move || async move {
        let client = resilient_client(addr);
        let mut stored = Vec::new();
        for partition in 0..PARTITIONS {
            let mut consumer = client
                .consumer("fo", partition, StartAt::Offset(0))
                .await
                .expect("consumer");
            loop {
                let records = consumer.poll(Duration::ZERO).await.expect("poll");
                if records.is_empty() {
                    break;
                }
                for record in records {
                    let value: [u8; 4] = record.value[..].try_into().expect("4-byte value");
                    stored.push((partition, record.offset, u32::from_le_bytes(value)));
                }
            }
        }
        stored
    });
    drop(server);
    let mut where_stored = std::collections::HashMap::new();
    for (partition, offset, value) in &stored {
        let previous = where_stored.insert(*value, (*partition, *offset));
        assert!(
            previous.is_none(),
            "value {value} stored twice: {previous:?} and {:?}",
            (partition, offset)
        );
    }
    for (value, ack) in &acks {
        assert_eq!(
            where_stored.get(value),
            Some(&(ack.partition, ack.offset)),
            "acknowledged value {value} is stored where its ack says"
        );
    }
    assert_eq!(
        stored.len(),
        RECORDS as usize,
        "nothing but the sent records"
    );
    for partition in 0..PARTITIONS {
        let values: Vec<u32> = stored
            .iter()
            .filter(|s| s.0 == partition)
            .map(|s| s.2)
            .collect();
        assert!(
            values.is_sorted(),
            "partition {partition} keeps the send order across retries"
        );
    }
}
