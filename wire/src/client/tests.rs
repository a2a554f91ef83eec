//! The producer's failure paths against an in-process fake Log service (on
//! the wire server) with the engine's idempotence rules, which misbehaves
//! on demand ([`Faults`]): it loses replies after appending (the resends
//! must be answered as duplicates), forgets its producers (the producer
//! must restart under a new id), refuses a poisoned batch (only that batch
//! fails), stalls (the delivery timeout must fail the batches), or answers
//! DescribeTopic late (a send racing `close` must be refused). Every
//! record is stored at most once and in order. Runs the producer on
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

const RECORDS: u32 = 2_000;

/// How the fake misbehaves.
#[derive(Debug, Clone, Copy, Default)]
struct Faults {
    /// Every this many appended batches, the stream ends before the reply.
    lose_reply_every_batches: Option<u64>,
    /// Every this many appended batches, after the reply, the fake forgets
    /// every producer (an evicted producer, or a tail cut by a crash).
    forget_producers_every_batches: Option<u64>,
    /// A batch holding this value is refused with INVALID_ARGUMENT.
    poison: Option<u32>,
    /// ProduceStream never answers (a stalled server).
    stall_streams: bool,
    /// DescribeTopic answers after this long.
    describe_delay: Duration,
}

/// A one-partition log with idempotent-producer dedup, like the engine's.
#[derive(Default)]
struct FakeLog {
    faults: Faults,
    values: Vec<Bytes>,
    /// Per producer: (sequence, record count, base offset) of each batch.
    producers: HashMap<u64, Vec<(u64, u32, u64)>>,
    batches_appended: u64,
}

fn sequence_error(kind: &'static str, message: String) -> Status {
    let mut status = Status::failed_precondition(message);
    status
        .metadata_mut()
        .insert(pb::SEQUENCE_ERROR_TRAILER, kind)
        .expect("ascii trailer");
    status
}

fn value_of(bytes: &Bytes) -> u32 {
    u32::from_le_bytes(bytes[..].try_into().expect("4-byte values"))
}

impl FakeLog {
    fn append(&mut self, request: pb::ProduceRequest) -> Result<pb::ProduceResponse, Status> {
        let sequence = request
            .sequence
            .ok_or_else(|| Status::invalid_argument("no sequence"))?;
        if let Some(poison) = self.faults.poison
            && request.records.iter().any(|r| value_of(&r.value) == poison)
        {
            return Err(Status::invalid_argument("poisoned batch"));
        }
        let count = request.records.len() as u32;
        let batches = self.producers.entry(request.producer_id).or_default();
        // Like the engine: an unknown producer starts at 0.
        let expected = batches.last().map_or(0, |(s, c, _)| s + u64::from(*c));
        if sequence < expected {
            let (_, _, base) = batches
                .iter()
                .find(|(s, c, _)| *s == sequence && *c == count)
                .ok_or_else(|| sequence_error(pb::SEQUENCE_STALE, "stale sequence".into()))?;
            return Ok(reply(*base, count, true));
        }
        if sequence > expected {
            return Err(sequence_error(
                pb::SEQUENCE_GAP,
                format!("sequence gap: expected {expected}, got {sequence}"),
            ));
        }
        let base = self.values.len() as u64;
        batches.push((sequence, count, base));
        self.values
            .extend(request.records.into_iter().map(|r| r.value));
        self.batches_appended += 1;
        Ok(reply(base, count, false))
    }

    fn loses_this_reply(&self, response: &pb::ProduceResponse) -> bool {
        let every = self.faults.lose_reply_every_batches;
        !response.duplicate && every.is_some_and(|n| self.batches_appended % n == 0)
    }

    /// Called after a reply went out.
    fn after_reply(&mut self) {
        let every = self.faults.forget_producers_every_batches;
        if every.is_some_and(|n| self.batches_appended % n == 0) {
            self.producers.clear();
        }
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
    let describe_delay = log.borrow().faults.describe_delay;
    router.unary(
        "/shardlog.v1.Log/DescribeTopic",
        move |request: Request<pb::DescribeTopicRequest>| async move {
            glommio::timer::sleep(describe_delay).await;
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
                if log.borrow().faults.stall_streams {
                    while input.message().await?.is_some() {}
                    std::future::pending::<()>().await;
                }
                while let Some(produce) = input.message().await? {
                    let response = log.borrow_mut().append(produce)?;
                    if log.borrow().loses_this_reply(&response) {
                        return Err(Status::unavailable("injected: appended, reply lost"));
                    }
                    sink.send(response).await?;
                    log.borrow_mut().after_reply();
                }
                Ok(())
            }
        },
    );
    router
}

/// Runs the fake on its own glommio thread until the returned guard drops;
/// returns its address and the log.
fn start_fake(faults: Faults) -> (SocketAddr, FakeGuard) {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let server_stop = stop.clone();
    let thread = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(move || async move {
            let log = Rc::new(RefCell::new(FakeLog {
                faults,
                ..FakeLog::default()
            }));
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
/// delivery and the producer's stats.
async fn produce_all<R: Runtime>(
    runtime: R,
    addr: SocketAddr,
) -> (Vec<Result<u64, ClientError>>, ProducerStats) {
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
    let mut results = Vec::new();
    for delivery in deliveries {
        results.push(delivery.await.map(|ack| ack.offset));
    }
    (results, producer.stats())
}

/// Every acknowledged record is stored once, at its offset, in send order.
fn check_acknowledged_stored_once(results: &[Result<u64, ClientError>], stored: &[Bytes]) {
    let acknowledged: Vec<(u32, u64)> = (0..RECORDS)
        .zip(results)
        .filter_map(|(value, result)| result.as_ref().ok().map(|offset| (value, *offset)))
        .collect();
    let stored_values: Vec<u32> = stored.iter().map(value_of).collect();
    let expected: Vec<u32> = acknowledged.iter().map(|(value, _)| *value).collect();
    assert_eq!(stored_values, expected, "stored once each, in order");
    for (value, offset) in acknowledged {
        assert_eq!(
            stored_values[offset as usize], value,
            "acknowledged at its place"
        );
    }
}

fn check_exactly_once(
    results: &[Result<u64, ClientError>],
    stats: ProducerStats,
    stored: &[Bytes],
) {
    assert!(
        results.iter().all(Result::is_ok),
        "every record acknowledged"
    );
    check_acknowledged_stored_once(results, stored);
    assert_eq!(stored.len(), RECORDS as usize);
    assert!(stats.stream_breaks > 0, "replies were lost: {stats:?}");
    assert!(
        stats.batches_duplicate > 0,
        "resends hit the dedup: {stats:?}"
    );
    assert_eq!(stats.batches_failed, 0);
}

const LOSE_REPLIES: Faults = Faults {
    lose_reply_every_batches: Some(9),
    forget_producers_every_batches: None,
    poison: None,
    stall_streams: false,
    describe_delay: Duration::ZERO,
};

/// Runs `client` on a glommio executor of its own.
fn on_glommio<T: Send + 'static, F: std::future::Future<Output = T> + 'static>(
    client: impl FnOnce() -> F + Send + 'static,
) -> T {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(client)
        .expect("client executor")
        .join()
        .expect("client thread")
}

#[test]
fn producer_resends_after_lost_replies_store_exactly_once_on_glommio() {
    let (addr, fake) = start_fake(LOSE_REPLIES);
    let (results, stats) = on_glommio(move || produce_all(GlommioRuntime, addr));
    check_exactly_once(&results, stats, &fake.finish());
}

#[test]
fn producer_restarts_under_a_new_id_when_the_server_forgets_it() {
    let faults = Faults {
        forget_producers_every_batches: Some(25),
        ..Faults::default()
    };
    let (addr, fake) = start_fake(faults);
    let (results, stats) = on_glommio(move || produce_all(GlommioRuntime, addr));
    let stored = fake.finish();
    assert!(
        results.iter().all(Result::is_ok),
        "a gap loses nothing: {stats:?}"
    );
    check_acknowledged_stored_once(&results, &stored);
    assert_eq!(stored.len(), RECORDS as usize);
    assert!(stats.stream_breaks > 0, "the gaps broke streams: {stats:?}");
}

#[test]
fn a_refused_batch_fails_alone_and_later_batches_land_once() {
    let poison = RECORDS / 2;
    let faults = Faults {
        poison: Some(poison),
        ..Faults::default()
    };
    let (addr, fake) = start_fake(faults);
    let (results, _) = on_glommio(move || produce_all(GlommioRuntime, addr));
    let stored = fake.finish();
    let failed: Vec<u32> = (0..RECORDS)
        .zip(&results)
        .filter(|(_, result)| result.is_err())
        .map(|(value, _)| value)
        .collect();
    assert!(failed.contains(&poison), "the poisoned batch fails");
    assert!(failed.len() <= 7, "only its batch fails: {failed:?}");
    assert_eq!(
        failed.last().map(|last| last - failed[0] + 1),
        Some(failed.len() as u32)
    );
    for result in results.iter().filter(|result| result.is_err()) {
        let code = result.as_ref().unwrap_err().status().map(Status::code);
        assert_eq!(code, Some(crate::Code::INVALID_ARGUMENT), "{result:?}");
    }
    check_acknowledged_stored_once(&results, &stored);
    assert_eq!(stored.len() + failed.len(), RECORDS as usize);
}

#[test]
fn a_stalled_server_fails_batches_at_the_delivery_timeout() {
    let faults = Faults {
        stall_streams: true,
        ..Faults::default()
    };
    let (addr, fake) = start_fake(faults);
    let results = on_glommio(move || async move {
        let client = Client::new(GlommioRuntime, addr, ClientConfig::default()).expect("client");
        let producer_config = ProducerConfig {
            linger: Duration::from_millis(1),
            delivery_timeout: Duration::from_millis(200),
            ..ProducerConfig::default()
        };
        let producer = client.producer(producer_config).expect("producer");
        let mut deliveries = Vec::new();
        for i in 0..20u32 {
            let value = Bytes::from(i.to_le_bytes().to_vec());
            deliveries.push(producer.send("fake", None, value).await.expect("send"));
        }
        producer.close().await;
        let mut results = Vec::new();
        for delivery in deliveries {
            results.push(delivery.await);
        }
        results
    });
    drop(fake);
    for result in results {
        assert!(
            matches!(result, Err(ClientError::DeliveryFailed { .. })),
            "{result:?}"
        );
    }
}

#[test]
fn a_send_racing_close_is_refused_not_left_pending() {
    let faults = Faults {
        describe_delay: Duration::from_millis(200),
        ..Faults::default()
    };
    let (addr, fake) = start_fake(faults);
    let (result, buffered) = on_glommio(move || async move {
        let client = Client::new(GlommioRuntime, addr, ClientConfig::default()).expect("client");
        let producer = client
            .producer(ProducerConfig::default())
            .expect("producer");
        let sender = producer.clone();
        // Waits for DescribeTopic (the topic is new) while close runs.
        let send = glommio::spawn_local(async move {
            sender
                .send("fake", None, Bytes::from_static(b"late"))
                .await
                .map(|_| ())
        });
        glommio::yield_if_needed().await;
        glommio::timer::sleep(Duration::from_millis(20)).await;
        producer.close().await;
        (send.await, producer.buffered_records())
    });
    drop(fake);
    assert!(matches!(result, Err(ClientError::Closed(_))), "{result:?}");
    assert_eq!(buffered, 0, "the refused record holds no buffer room");
}

#[cfg(feature = "tokio")]
#[test]
fn producer_resends_after_lost_replies_store_exactly_once_on_tokio() {
    let (addr, fake) = start_fake(LOSE_REPLIES);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let local = tokio::task::LocalSet::new();
    let (results, stats) = local.block_on(&runtime, produce_all(TokioRuntime, addr));
    drop(local); // closes the client's connection before the fake drains
    drop(runtime);
    check_exactly_once(&results, stats, &fake.finish());
}

/// Glommio, except that connections never complete (a blackholed address).
#[derive(Clone)]
struct BlackholeRuntime;

impl Runtime for BlackholeRuntime {
    type Io = glommio::net::TcpStream;

    fn connect(&self, _addr: SocketAddr) -> LocalBoxFuture<std::io::Result<Self::Io>> {
        Box::pin(std::future::pending())
    }

    fn spawn(&self, task: LocalBoxFuture<()>) {
        GlommioRuntime.spawn(task);
    }

    fn sleep(&self, duration: Duration) -> LocalBoxFuture<()> {
        GlommioRuntime.sleep(duration)
    }

    fn timer(&self) -> Arc<dyn Timer> {
        GlommioRuntime.timer()
    }
}

#[test]
fn an_abandoned_connect_neither_jams_its_slot_nor_waits_for_ever() {
    let outcome = on_glommio(|| async {
        let addr: SocketAddr = "127.0.0.1:9".parse().expect("address");
        let pool = Pool::new(BlackholeRuntime, addr, 1, ChannelConfig::default())
            .expect("pool")
            .with_connect_timeout(Duration::from_millis(50));
        // The first caller gives up on its attempt (a timeout of its own).
        let gave_up = async {
            glommio::timer::sleep(Duration::from_millis(10)).await;
            None
        };
        let first = futures_lite::future::or(async { Some(pool.channel(0).await) }, gave_up);
        assert!(first.await.is_none());
        // The next caller gets an attempt of its own, bounded.
        pool.channel(0).await.map(|_| ())
    });
    assert!(
        matches!(&outcome, Err(ClientError::Connect { reason, .. }) if reason.contains("no connection within")),
        "{outcome:?}"
    );
}
