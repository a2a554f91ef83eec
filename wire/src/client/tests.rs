//! The producer's retry path against an in-process fake Log service (on
//! the wire server) that appends a batch and then loses its reply every
//! few batches: the resends must be answered as duplicates, so every
//! record is stored exactly once and in order. Runs the producer on
//! glommio, and on tokio with the `tokio` feature.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::proto::shardlog::v1 as pb;
use crate::server::{Router, Server, ServerConfig};
use crate::{Request, Response, Status};

/// Every this many appended batches, the stream ends before the reply.
const LOSE_REPLY_EVERY_BATCHES: u64 = 9;
const RECORDS: u32 = 2_000;

/// A one-partition log with idempotent-producer dedup, like the engine's.
#[derive(Default)]
struct FakeLog {
    values: Vec<Bytes>,
    /// Per producer: (sequence, record count, base offset) of each batch.
    producers: HashMap<u64, Vec<(u64, u32, u64)>>,
    batches_appended: u64,
}

impl FakeLog {
    fn append(&mut self, request: pb::ProduceRequest) -> Result<pb::ProduceResponse, Status> {
        let sequence = request
            .sequence
            .ok_or_else(|| Status::invalid_argument("no sequence"))?;
        let count = request.records.len() as u32;
        let batches = self.producers.entry(request.producer_id).or_default();
        let expected = batches.last().map_or(0, |(s, c, _)| s + u64::from(*c));
        if sequence < expected {
            let (_, _, base) = batches
                .iter()
                .find(|(s, c, _)| *s == sequence && *c == count)
                .ok_or_else(|| Status::failed_precondition("stale sequence"))?;
            return Ok(reply(*base, count, true));
        }
        if sequence > expected {
            return Err(Status::failed_precondition(format!(
                "sequence gap: expected {expected}, got {sequence}"
            )));
        }
        let base = self.values.len() as u64;
        batches.push((sequence, count, base));
        self.values
            .extend(request.records.into_iter().map(|r| r.value));
        self.batches_appended += 1;
        Ok(reply(base, count, false))
    }
}

fn reply(base_offset: u64, record_count: u32, duplicate: bool) -> pb::ProduceResponse {
    pb::ProduceResponse {
        partition: 0,
        base_offset,
        record_count,
        duplicate,
    }
}

fn fake_router(log: Rc<RefCell<FakeLog>>) -> Router {
    let mut router = Router::new();
    router.unary(
        "/shardlog.v1.Log/DescribeTopic",
        |request: Request<pb::DescribeTopicRequest>| async move {
            let topic = pb::TopicDescription {
                name: request.into_inner().topic,
                partition_count: 1,
                ..Default::default()
            };
            Ok(Response::new(pb::DescribeTopicResponse {
                topic: Some(topic),
            }))
        },
    );
    let unary_log = log.clone();
    router.unary(
        "/shardlog.v1.Log/Produce",
        move |request: Request<pb::ProduceRequest>| {
            let result = unary_log.borrow_mut().append(request.into_inner());
            async move { result.map(Response::new) }
        },
    );
    router.bidi_streaming(
        "/shardlog.v1.Log/ProduceStream",
        move |request: Request<crate::Streaming<pb::ProduceRequest>>,
              mut sink: crate::ResponseSink<pb::ProduceResponse>| {
            let log = log.clone();
            async move {
                let mut input = request.into_inner();
                while let Some(produce) = input.message().await? {
                    let response = log.borrow_mut().append(produce)?;
                    let appended = log.borrow().batches_appended;
                    if !response.duplicate && appended % LOSE_REPLY_EVERY_BATCHES == 0 {
                        return Err(Status::unavailable("injected: appended, reply lost"));
                    }
                    sink.send(response).await?;
                }
                Ok(())
            }
        },
    );
    router
}

/// Runs the fake on its own glommio thread until the returned guard drops;
/// returns its address and the log.
fn start_fake() -> (SocketAddr, FakeGuard) {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let server_stop = stop.clone();
    let thread = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(move || async move {
            let log = Rc::new(RefCell::new(FakeLog::default()));
            let config = ServerConfig {
                drain_grace: Duration::from_millis(200),
                ..ServerConfig::default()
            };
            let server = Server::new(fake_router(log.clone()), config);
            let listener = glommio::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            addr_tx
                .send(listener.local_addr().expect("addr"))
                .expect("send addr");
            let serving = server.clone();
            glommio::spawn_local(async move { serving.serve(listener).await }).detach();
            while !server_stop.load(Ordering::Acquire) {
                glommio::timer::sleep(Duration::from_millis(5)).await;
            }
            server.shutdown().await;
            let log = log.borrow();
            (log.values.clone(), log.batches_appended)
        })
        .expect("fake server executor");
    let addr = addr_rx.recv().expect("fake address");
    (
        addr,
        FakeGuard {
            stop,
            thread: Some(thread),
        },
    )
}

struct FakeGuard {
    stop: Arc<AtomicBool>,
    thread: Option<glommio::ExecutorJoinHandle<(Vec<Bytes>, u64)>>,
}

impl FakeGuard {
    /// Stops the fake; returns the stored values.
    fn finish(mut self) -> Vec<Bytes> {
        self.stop.store(true, Ordering::Release);
        let thread = self.thread.take().expect("running");
        thread.join().expect("fake thread").0
    }
}

impl Drop for FakeGuard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// Sends `RECORDS` values through a producer; returns each record's
/// offset and the producer's stats.
async fn produce_all<R: Runtime>(runtime: R, addr: SocketAddr) -> (Vec<u64>, ProducerStats) {
    let config = ClientConfig {
        retry: RetryPolicy {
            backoff: Backoff {
                base: Duration::from_millis(1),
                max: Duration::from_millis(20),
                jitter_ratio: 0.25,
            },
            ..RetryPolicy::default()
        },
        ..ClientConfig::default()
    };
    let client = Client::new(runtime, addr, config).expect("client");
    let producer_config = ProducerConfig {
        batch_records_max: 7,
        linger: Duration::from_millis(1),
        ..ProducerConfig::default()
    };
    let producer = client.producer(producer_config).expect("producer");
    let mut deliveries = Vec::new();
    for i in 0..RECORDS {
        let value = Bytes::from(i.to_le_bytes().to_vec());
        deliveries.push(producer.send("fake", None, value).await.expect("send"));
    }
    producer.close().await;
    let mut offsets = Vec::new();
    for delivery in deliveries {
        offsets.push(delivery.await.expect("acknowledged").offset);
    }
    (offsets, producer.stats())
}

fn check_exactly_once(offsets: &[u64], stats: ProducerStats, stored: &[Bytes]) {
    let expected: Vec<u64> = (0..u64::from(RECORDS)).collect();
    assert_eq!(offsets, expected, "every record acknowledged at its place");
    let values: Vec<u32> = stored
        .iter()
        .map(|v| u32::from_le_bytes(v[..].try_into().expect("4 bytes")))
        .collect();
    assert_eq!(
        values,
        (0..RECORDS).collect::<Vec<u32>>(),
        "stored once, in order"
    );
    assert!(stats.stream_breaks > 0, "replies were lost: {stats:?}");
    assert!(
        stats.batches_duplicate > 0,
        "resends hit the dedup: {stats:?}"
    );
    assert_eq!(stats.batches_failed, 0);
}

#[test]
fn producer_resends_after_lost_replies_store_exactly_once_on_glommio() {
    let (addr, fake) = start_fake();
    let (offsets, stats) = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(move || produce_all(GlommioRuntime, addr))
        .expect("client executor")
        .join()
        .expect("client thread");
    check_exactly_once(&offsets, stats, &fake.finish());
}

#[cfg(feature = "tokio")]
#[test]
fn producer_resends_after_lost_replies_store_exactly_once_on_tokio() {
    let (addr, fake) = start_fake();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let local = tokio::task::LocalSet::new();
    let (offsets, stats) = local.block_on(&runtime, produce_all(TokioRuntime, addr));
    drop(local); // closes the client's connection before the fake drains
    drop(runtime);
    check_exactly_once(&offsets, stats, &fake.finish());
}
