//! The `producer` call shape: the generator hands single records to the client library's
//! batching, idempotent [`Producer`] (pipelined over ProduceStream) on the open-loop schedule,
//! so `--rate` counts records per second. Each record's latency runs from its scheduled time
//! to its ack (send-to-ack, no coordinated omission); service time from the actual `send`.
//!
//! A full producer buffer (`--inflight-max` records) fails the send at once
//! ([`WhenFull::Error`]) and the record counts as overflowed: the schedule never waits.
//! Verification is the same as for the other produce shapes: record `k` of partition `p`
//! carries the key `(p, k)`; consecutive acks of a partition are merged into ranges
//! ([`Ack::first_index`]) that must tile the partition's new offsets, and `--read-back` checks
//! every stored key against the range that acknowledged it.

use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_lite::future;
use glommio::channels::local_channel::{self, LocalReceiver};
use shardlog_wire::client::{
    Client, ClientConfig, ClientError, DeliveryFuture, GlommioRuntime, Producer, ProducerConfig,
    WhenFull,
};
use shardlog_wire::proto::shardlog::v1::AckLevel;

use super::config::AckMode;
use super::driver::{Run, verify_acks};
use super::schedule::{Arrivals, PartitionPicker, SCHEDULE_SLACK};
use super::stats::Verification;
use super::verify::{Ack, RECORD_KEY_BYTES, encode_key};

/// A collector reads the clock at least once per this many acks that were already resolved
/// when it looked (acks of one batch resolve together; this bounds how stale a reused
/// timestamp can be while the collector works through a backlog).
const CLOCK_REUSE_ACKS_MAX: u32 = 64;
/// Acks a collector counts before it moves the progress bar (per record it would cost more
/// than the rest of the ack's bookkeeping).
const PROGRESS_STEP_ACKS: u64 = 1024;
/// Keys carved from one allocation (12 bytes each): one allocation per 4096 records.
const KEY_ARENA_KEYS: usize = 4096;
/// Bytes the producer may buffer (its record bound is `--inflight-max`).
const PRODUCER_BUFFER_BYTES_MAX: usize = 256 << 20;
/// Largest producer batch in bytes (its record bound is `--batch-records`): under the 4 MiB
/// message limit with the producer's headroom.
const PRODUCER_BATCH_BYTES_MAX: usize = 3 << 20;

/// A record handed to the producer, waiting for its ack in its partition's collector.
struct Sent {
    due: Instant,
    sent: Instant,
    /// The record's index in its partition's sequence (its key's second half).
    index: u32,
    delivery: DeliveryFuture,
}

/// Runs the producer shape: schedule, collectors, close, verification.
pub(super) async fn run_producer(run: &Rc<Run>, start: Instant) -> Verification {
    let producer = match open_producer(run) {
        Ok(producer) => producer,
        Err(problem) => {
            return Verification {
                problems: vec![problem],
                ..Verification::default()
            };
        }
    };
    let partitions = run.config.partitions as usize;
    let mut queues = Vec::with_capacity(partitions);
    let mut collectors = Vec::with_capacity(partitions);
    for partition in 0..run.config.partitions {
        // Unbounded in type, bounded in fact: a record enters when the producer accepts it
        // (at most `--inflight-max` unacknowledged) and leaves as soon as its ack is seen; a
        // bounded queue here would stall the schedule (hiding overflow as latency) whenever
        // one partition's acks were behind.
        let (queue, deliveries) = local_channel::new_unbounded::<Sent>();
        queues.push(queue);
        let run = run.clone();
        collectors.push(glommio::spawn_local(async move {
            collect(&run, partition, deliveries).await
        }));
    }
    send_scheduled(run, &producer, &queues, start).await;
    producer.close().await;
    drop(queues);
    for collector in collectors {
        collector.await;
    }
    verify_acks(run).await
}

fn open_producer(run: &Run) -> Result<Producer<GlommioRuntime>, String> {
    let config = &run.config;
    let addr = resolve(&config.target)?;
    let client_config = ClientConfig {
        connections: config.connections as usize,
        request_timeout: Duration::from_millis(config.timeout_ms),
        ..ClientConfig::default()
    };
    let client = Client::new(GlommioRuntime, addr, client_config)
        .map_err(|e| format!("producer client: {e}"))?;
    let batch_bytes_max = PRODUCER_BATCH_BYTES_MAX;
    let producer_config = ProducerConfig {
        batch_records_max: config.batch_records as usize,
        batch_bytes_max,
        linger: Duration::from_secs_f64(config.linger_ms / 1000.0),
        buffer_records_max: buffer_records_max(config),
        buffer_bytes_max: PRODUCER_BUFFER_BYTES_MAX.max(batch_bytes_max),
        when_full: WhenFull::Error,
        ack: match config.ack {
            AckMode::Durable => AckLevel::Durable,
            AckMode::Written => AckLevel::Written,
        },
        delivery_timeout: Duration::from_millis(config.timeout_ms),
        ..ProducerConfig::default()
    };
    client
        .producer(producer_config)
        .map_err(|e| format!("producer: {e}"))
}

/// The producer's record bound: `--inflight-max`, at least one batch.
fn buffer_records_max(config: &super::LoadConfig) -> usize {
    (config.inflight_max as usize).max(config.batch_records as usize)
}

fn resolve(target: &str) -> Result<SocketAddr, String> {
    target
        .to_socket_addrs()
        .map_err(|e| format!("resolve {target}: {e}"))?
        .next()
        .ok_or_else(|| format!("resolve {target}: no address"))
}

/// Hands one record to the producer at each due time until the schedule ends.
async fn send_scheduled(
    run: &Rc<Run>,
    producer: &Producer<GlommioRuntime>,
    queues: &[local_channel::LocalSender<Sent>],
    start: Instant,
) {
    let config = &run.config;
    let mut arrivals = Arrivals::new(config.schedule, config.rate, config.seed);
    let mut picker = PartitionPicker::new(config.keys, config.partitions, config.seed);
    let mut next_index = vec![0u32; queues.len()];
    let mut keys = BytesMut::new();
    let buffer_full_at = buffer_records_max(config);
    loop {
        let due = start + arrivals.next_due();
        if due >= run.measure_until {
            break;
        }
        // One clock read per record; a sleep only when the record is due well ahead.
        let mut sent = Instant::now();
        if due > sent + SCHEDULE_SLACK {
            glommio::timer::sleep(due - sent).await;
            sent = Instant::now();
        }
        let partition = picker.pick();
        if producer.buffered_records() >= buffer_full_at {
            // Full: count it without building the producer's error (cheap under overload).
            if run.measured(due) {
                run.recorder.borrow_mut().overflowed += 1;
            }
            continue;
        }
        let slot = partition as usize;
        let index = next_index[slot];
        let key = next_key(&mut keys, u64::from(partition), index);
        let result = producer
            .send_to(&config.topic, partition, Some(key), run.payload.clone())
            .await;
        match result {
            Ok(delivery) => {
                next_index[slot] = index.wrapping_add(1);
                let record = Sent {
                    due,
                    sent,
                    index,
                    delivery,
                };
                if queues[slot].send(record).await.is_err() {
                    run.recorder.borrow_mut().error("COLLECTOR_GONE");
                }
            }
            Err(ClientError::BufferFull { .. }) => {
                if run.measured(due) {
                    run.recorder.borrow_mut().overflowed += 1;
                }
            }
            Err(error) if run.measured(due) => run.recorder.borrow_mut().error(error_name(&error)),
            Err(_) => {}
        }
    }
}

/// The key `(stream, index)` carved from a shared arena (no allocation per record).
fn next_key(arena: &mut BytesMut, stream: u64, index: u32) -> Bytes {
    if arena.capacity() < RECORD_KEY_BYTES {
        *arena = BytesMut::with_capacity(RECORD_KEY_BYTES * KEY_ARENA_KEYS);
    }
    encode_key(stream, index, arena);
    arena.split_to(RECORD_KEY_BYTES).freeze()
}

fn error_name(error: &ClientError) -> &'static str {
    match error {
        ClientError::BufferFull { .. } => "BUFFER_FULL",
        _ => error
            .status()
            .and_then(|status| status.code().name())
            .unwrap_or("CLIENT_ERROR"),
    }
}

/// Awaits one partition's deliveries in send order (a partition's acks come in order),
/// records their latency, and merges consecutive acks into ranges for verification.
async fn collect(run: &Run, partition: u32, deliveries: LocalReceiver<Sent>) {
    let mut range: Option<Ack> = None;
    let mut done = Instant::now();
    let mut clock_reuses = 0u32;
    let mut progress_unshown = 0u64;
    while let Some(record) = deliveries.recv().await {
        let mut delivery = record.delivery;
        let result = match future::poll_once(&mut delivery).await {
            Some(result) if clock_reuses < CLOCK_REUSE_ACKS_MAX => {
                clock_reuses += 1;
                result
            }
            Some(result) => {
                done = Instant::now();
                clock_reuses = 0;
                result
            }
            None => {
                let result = delivery.await;
                done = Instant::now();
                clock_reuses = 0;
                result
            }
        };
        // A reused timestamp may predate a send that happened after it.
        let done = done.max(record.sent);
        let measured = run.measured(record.due);
        // Sent early (within the schedule slack) or late: from whichever came first.
        let from = record.due.min(record.sent);
        match result {
            Ok(ack) => {
                if ack.partition != partition {
                    run.recorder.borrow_mut().error("WRONG_PARTITION");
                }
                extend_range(run, &mut range, partition, ack.offset, record.index);
                if measured {
                    run.recorder
                        .borrow_mut()
                        .ok(record.due, done - from, done - record.sent, 1);
                    progress_unshown += 1;
                    if progress_unshown == PROGRESS_STEP_ACKS {
                        run.progress.inc(progress_unshown);
                        progress_unshown = 0;
                    }
                }
            }
            Err(error) => {
                run.acks.borrow_mut().ambiguous_records += 1;
                if measured {
                    run.recorder.borrow_mut().error(error_name(&error));
                }
            }
        }
    }
    run.progress.inc(progress_unshown);
    if let Some(last) = range {
        run.acks.borrow_mut().push(last, last.record_count);
    }
}

/// Adds the ack of record `index` at `offset` to the open range, or closes it and opens a
/// new one when the record does not follow it (in offset and in index).
fn extend_range(run: &Run, range: &mut Option<Ack>, partition: u32, offset: u64, index: u32) {
    if let Some(open) = range {
        let follows = open.base_offset + u64::from(open.record_count) == offset
            && open.first_index.wrapping_add(open.record_count) == index;
        if follows {
            open.record_count += 1;
            return;
        }
        run.acks.borrow_mut().push(*open, open.record_count);
    }
    *range = Some(Ack {
        request_id: u64::from(partition),
        first_index: index,
        partition,
        base_offset: offset,
        record_count: 1,
    });
}
