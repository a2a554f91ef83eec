//! Soak: one server (2 shards) under mixed load at 70% of a calibrated
//! sustainable rate, with faults injected at seeded random moments, checked
//! for lost or duplicated acknowledged records, latency drift and leaks.
//!
//! Load (open loop, paced): raw unary Produce, one ProduceStream per
//! partition, the client library's idempotent `Producer`, long-poll Fetch
//! readers and Subscribe followers. Faults (seeded; `SHARDLOG_SOAK_SEED`
//! replays): abrupt connection resets mid-stream, cancelled streams, 1 us
//! deadlines, bad requests, stalled subscribers that never read, bursts
//! above the in-flight byte budget (must be UNAVAILABLE, not buffered), and
//! topic create/delete churn. Faults go to their own topics, so the tracked
//! partitions hold exactly what the load producers sent.
//!
//! Pass: every acknowledged record at its offset, byte-identical, once, in
//! send order per stream and idempotent producer; offsets contiguous; p99 ack
//! latency of the last tenth within 20% (plus a noise floor) of the first;
//! server anonymous memory and open files flat after warm-up.
//! `SHARDLOG_SOAK_SECS` sets the load duration (plain `cargo test`: 15 s; CI
//! runs 300 s; see docs/reliability.md).

mod common;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Log, Rng, TestServer, block_on, open_produce_stream, open_subscribe, produce_to};
use shardlog_wire::Code;
use shardlog_wire::client::{
    CallOptions, Channel, Client, ClientConfig, GlommioRuntime, ProducerConfig,
};
use shardlog_wire::proto::shardlog::v1 as pb;

const SHARDS: usize = 2;
/// Load duration when `SHARDLOG_SOAK_SECS` is unset (the plain test run).
const SOAK_SECS_DEFAULT: u64 = 15;
/// Closed-loop calibration: this many callers for this long.
const CALIBRATION_CALLERS: usize = 4;
const CALIBRATION_MS: u64 = 2_000;
/// The load runs at this share of the calibrated rate...
const LOAD_PERCENT: u64 = 70;
/// ...capped at this many batches/s (about 1 MB/s stored), because nothing
/// is deleted during the run: disk use stays near 300 MB per 5 minutes on
/// fast machines. `SHARDLOG_SOAK_BATCHES_PER_S_MAX` overrides it.
const LOAD_BATCHES_PER_S_MAX_DEFAULT: u64 = 1_000;
/// Small segments, so that the run rolls segments many times.
const SEGMENT_BYTES_MAX: u64 = 16 << 20;
/// Shares of the load: raw unary, ProduceStream, library producer.
const UNARY_SHARE_PERCENT: u64 = 40;
const STREAM_SHARE_PERCENT: u64 = 30;
const LIBRARY_SHARE_PERCENT: u64 = 30;
const RECORDS_PER_BATCH: usize = 10;
const VALUE_BYTES: usize = 100;
/// Unary produces one worker may have in flight; beyond it a tick is skipped.
const UNARY_INFLIGHT_MAX: usize = 64;
/// Deliveries of the library producer awaited at once.
const LIBRARY_PENDING_MAX: usize = 20_000;
/// Faults start this long apart (uniform), after the warm-up.
const FAULT_GAP_MS_MIN: u64 = 500;
const FAULT_GAP_MS_MAX: u64 = 2_500;
/// Latency samples sent within this long after a fault are not compared.
const FAULT_SETTLE_MS: u64 = 250;
const STALLED_SUBSCRIBERS_MAX: usize = 2;
const BURST_CALLS: usize = 24;
const BURST_VALUE_BYTES: usize = 128 << 10;
/// The server's in-flight byte budget; a burst exceeds it several times.
const INFLIGHT_BYTES_MAX: usize = 1 << 20;
const SAMPLE_INTERVAL_MS: u64 = 250;
const TENTHS: usize = 10;
/// Latency windows: one p99 per window, the median per tenth.
const WINDOW_MS: u64 = 1_000;
/// The drift check needs this many windows per tenth (a load of 50 s or
/// more); shorter runs report the tails without asserting on them.
const WINDOWS_PER_TENTH_MIN: usize = 5;
/// Pass bounds (see docs/reliability.md for why these).
const P99_DRIFT_PERCENT_MAX: u64 = 20;
const P99_NOISE_FLOOR_US_DEFAULT: u64 = 2_000;
const LATENCY_SAMPLES_PER_TENTH_MIN: usize = 200;
const RSS_GROWTH_PERCENT_MAX: u64 = 10;
const RSS_SLACK_KIB: u64 = 16 << 10;
const FDS_SLACK: usize = 16;
const FDS_FINAL_SLACK: usize = 4;
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

const TOPIC_UNARY: &str = "soak-unary";
const TOPIC_STREAM: &str = "soak-stream";
const TOPIC_LIBRARY: &str = "soak-library";
const TOPIC_FAULTS: &str = "soak-faults";
const TOPIC_CALIBRATION: &str = "soak-calibration";
const PARTITIONS_UNARY: u32 = 2;
const PARTITIONS_STREAM: u32 = 2;
const PARTITIONS_LIBRARY: u32 = 4;
const PARTITIONS_FAULTS: u32 = 2;

/// The kinds of injected fault, in the order the RNG picks them.
const FAULT_KINDS: [&str; 7] = [
    "connection_reset",
    "cancelled_stream",
    "deadline_1us",
    "bad_requests",
    "stalled_subscriber",
    "burst_over_budget",
    "topic_churn",
];

/// Everything the load, the faults and the checker share (one executor).
#[derive(Default)]
struct Soak {
    stop: Cell<bool>,
    /// (topic, partition) -> offset -> value, acknowledged.
    acknowledged: RefCell<HashMap<(String, u32), BTreeMap<u64, Bytes>>>,
    /// (ms since load start, ack latency us) of clean unary produces.
    latencies: RefCell<Vec<(u64, u64)>>,
    faults: RefCell<BTreeMap<&'static str, u64>>,
    faults_active: Cell<u32>,
    /// Bumped at each fault start and end: a sample spanning one is dirty.
    fault_epoch: Cell<u64>,
    settled_at: Cell<Option<Instant>>,
    violations: RefCell<Vec<String>>,
    /// Calls refused UNAVAILABLE (load shed), by who.
    refused: RefCell<BTreeMap<&'static str, u64>>,
    ticks_skipped: Cell<u64>,
    records_fetched: Cell<u64>,
    records_followed: Cell<u64>,
    unacknowledged_pending: Cell<usize>,
    load_start: Cell<Option<Instant>>,
}

impl Soak {
    fn violation(&self, message: String) {
        eprintln!("soak violation: {message}");
        self.violations.borrow_mut().push(message);
    }

    fn acknowledge(&self, topic: &str, partition: u32, base_offset: u64, values: Vec<Bytes>) {
        let mut acknowledged = self.acknowledged.borrow_mut();
        let log = acknowledged
            .entry((topic.to_owned(), partition))
            .or_default();
        for (i, value) in values.into_iter().enumerate() {
            if log.insert(base_offset + i as u64, value).is_some() {
                drop(acknowledged);
                self.violation(format!(
                    "{topic}/{partition}/{}: offset acknowledged twice",
                    base_offset + i as u64
                ));
                return;
            }
        }
    }

    fn refuse(&self, who: &'static str) {
        *self.refused.borrow_mut().entry(who).or_default() += 1;
    }

    /// A probe taken as a call is sent: its time and whether it is clean.
    fn probe(&self) -> Probe {
        Probe {
            sent: Instant::now(),
            quiet: self.is_quiet(),
            epoch: self.fault_epoch.get(),
        }
    }

    /// Records the ack latency of a call if no fault overlapped it.
    fn sample(&self, probe: &Probe) {
        let latency_us = probe.sent.elapsed().as_micros() as u64;
        let Some(load_start) = self.load_start.get() else {
            return;
        };
        if probe.quiet && probe.epoch == self.fault_epoch.get() {
            let at_ms = probe.sent.saturating_duration_since(load_start).as_millis() as u64;
            self.latencies.borrow_mut().push((at_ms, latency_us));
        }
    }

    /// Whether a call sent now can give a latency sample worth comparing.
    fn is_quiet(&self) -> bool {
        self.faults_active.get() == 0
            && self
                .settled_at
                .get()
                .is_none_or(|settled| Instant::now() >= settled)
    }

    fn fault_started(&self, kind: &'static str) {
        *self.faults.borrow_mut().entry(kind).or_default() += 1;
        self.faults_active.set(self.faults_active.get() + 1);
        self.fault_epoch.set(self.fault_epoch.get() + 1);
    }

    fn fault_ended(&self) {
        self.faults_active.set(self.faults_active.get() - 1);
        self.fault_epoch.set(self.fault_epoch.get() + 1);
        self.settled_at.set(Some(
            Instant::now() + Duration::from_millis(FAULT_SETTLE_MS),
        ));
    }
}

/// When a call was sent and whether a fault was near.
struct Probe {
    sent: Instant,
    quiet: bool,
    epoch: u64,
}

impl Probe {
    /// A probe that never gives a sample (a stream's first call, which
    /// includes opening the stream).
    fn unsampled() -> Probe {
        Probe {
            sent: Instant::now(),
            quiet: false,
            epoch: 0,
        }
    }
}

/// A value that names its writer and its place in that writer's order.
fn value(writer: &str, sequence: u64, bytes: usize) -> Bytes {
    let mut value = format!("{writer}:{sequence}:").into_bytes();
    value.resize(bytes.max(value.len()), b'.');
    value.into()
}

fn batch(
    topic: &str,
    partition: u32,
    writer: &str,
    first: u64,
) -> (pb::ProduceRequest, Vec<Bytes>) {
    let values: Vec<Bytes> = (0..RECORDS_PER_BATCH as u64)
        .map(|i| value(writer, first + i, VALUE_BYTES))
        .collect();
    let records = values
        .iter()
        .map(|value| pb::Record {
            value: value.clone(),
            ..common::record(b"")
        })
        .collect();
    (produce_to(topic, partition, records), values)
}

fn options(timeout: Duration) -> CallOptions {
    CallOptions {
        timeout: Some(timeout),
        ..CallOptions::default()
    }
}

/// Paces a worker: the tick times of a fixed period from `start`; a tick
/// missed by more than a period is skipped, not sent late in a burst.
struct Pacer {
    start: Instant,
    period: Duration,
    tick: u64,
}

impl Pacer {
    fn new(period: Duration) -> Pacer {
        Pacer {
            start: Instant::now(),
            period,
            tick: 0,
        }
    }

    /// Waits for the next tick; returns how many ticks were skipped.
    async fn next(&mut self) -> u64 {
        self.tick += 1;
        let due = self.start + self.period * self.tick as u32;
        let now = Instant::now();
        if now < due {
            glommio::timer::sleep(due - now).await;
            return 0;
        }
        let behind = ((now - due).as_nanos() / self.period.as_nanos().max(1)) as u64;
        self.tick += behind;
        behind
    }
}

fn period_for(rate_per_s: f64) -> Duration {
    Duration::from_secs_f64(1.0 / rate_per_s.max(1.0))
}

/// Closed loop: batches per second `CALIBRATION_CALLERS` callers sustain.
async fn calibrate(log: &Log) -> f64 {
    log.create_topic(TOPIC_CALIBRATION, 2)
        .await
        .expect("create");
    let started = Instant::now();
    let deadline = started + Duration::from_millis(CALIBRATION_MS);
    let callers = (0..CALIBRATION_CALLERS).map(|caller| {
        let log = log.clone();
        async move {
            let mut batches = 0u64;
            while Instant::now() < deadline {
                let writer = format!("cal{caller}");
                let (request, _) = batch(TOPIC_CALIBRATION, caller as u32 % 2, &writer, batches);
                log.produce(request).await.expect("calibration produce");
                batches += 1;
            }
            batches
        }
    });
    let batches: u64 = futures_util::future::join_all(callers).await.iter().sum();
    batches as f64 / started.elapsed().as_secs_f64()
}

/// Raw unary Produce, open loop, round robin over the partitions.
async fn unary_producer(soak: Rc<Soak>, log: Log, batches_per_s: f64) {
    let mut pacer = Pacer::new(period_for(batches_per_s));
    let inflight = Rc::new(Cell::new(0usize));
    let mut sequence = 0u64;
    while !soak.stop.get() {
        soak.ticks_skipped
            .set(soak.ticks_skipped.get() + pacer.next().await);
        if inflight.get() >= UNARY_INFLIGHT_MAX {
            soak.ticks_skipped.set(soak.ticks_skipped.get() + 1);
            continue;
        }
        let partition = (sequence / RECORDS_PER_BATCH as u64 % u64::from(PARTITIONS_UNARY)) as u32;
        let writer = format!("unary{partition}");
        let (request, values) = batch(TOPIC_UNARY, partition, &writer, sequence);
        sequence += RECORDS_PER_BATCH as u64;
        let (soak, log, inflight) = (soak.clone(), log.clone(), inflight.clone());
        inflight.set(inflight.get() + 1);
        glommio::spawn_local(async move {
            let probe = soak.probe();
            let result = log
                .channel
                .unary::<_, pb::ProduceResponse>(
                    "/shardlog.v1.Log/Produce",
                    &request,
                    options(CALL_TIMEOUT),
                )
                .await;
            match result {
                Ok(response) => {
                    let response = response.into_inner();
                    soak.acknowledge(TOPIC_UNARY, partition, response.base_offset, values);
                    soak.sample(&probe);
                }
                Err(status) if status.code() == Code::UNAVAILABLE => soak.refuse("unary"),
                Err(status) => soak.violation(format!("unary produce: {status:?}")),
            }
            inflight.set(inflight.get() - 1);
        })
        .detach();
    }
    while inflight.get() > 0 {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
}

/// One partition's ProduceStream producer: sends one request and awaits its
/// reply; opens a new stream when the server ends one (UNAVAILABLE when
/// shedding load).
async fn stream_producer(soak: Rc<Soak>, log: Log, partition: u32, batches_per_s: f64) {
    let mut pacer = Pacer::new(period_for(batches_per_s));
    let writer = format!("stream{partition}");
    let mut sequence = 0u64;
    while !soak.stop.get() {
        soak.ticks_skipped
            .set(soak.ticks_skipped.get() + pacer.next().await);
        let (mut sink, responses) = open_produce_stream(&log.channel)
            .await
            .expect("open ProduceStream");
        let mut responses = match send_and_open(
            &soak,
            &mut sink,
            responses,
            &writer,
            partition,
            &mut sequence,
        )
        .await
        {
            Some(responses) => responses,
            None => continue,
        };
        while !soak.stop.get() {
            soak.ticks_skipped
                .set(soak.ticks_skipped.get() + pacer.next().await);
            let (request, values) = batch(TOPIC_STREAM, partition, &writer, sequence);
            sequence += RECORDS_PER_BATCH as u64;
            let probe = soak.probe();
            if sink.send(&request).await.is_err() {
                soak.refuse("stream");
                break;
            }
            if !stream_reply(&soak, &mut responses, partition, values, &probe).await {
                break;
            }
        }
        sink.finish().ok();
    }
}

/// Sends the first request of a new stream and waits for the reply headers.
async fn send_and_open(
    soak: &Soak,
    sink: &mut shardlog_wire::client::RequestSink<pb::ProduceRequest>,
    responses: shardlog_wire::client::StreamingResponseFuture<pb::ProduceResponse>,
    writer: &str,
    partition: u32,
    sequence: &mut u64,
) -> Option<shardlog_wire::Streaming<pb::ProduceResponse>> {
    let (request, values) = batch(TOPIC_STREAM, partition, writer, *sequence);
    *sequence += RECORDS_PER_BATCH as u64;
    if sink.send(&request).await.is_err() {
        soak.refuse("stream");
        return None;
    }
    let mut responses = match responses.response().await {
        Ok(responses) => responses.into_inner(),
        Err(status) if status.code() == Code::UNAVAILABLE => {
            soak.refuse("stream");
            return None;
        }
        Err(status) => {
            soak.violation(format!("ProduceStream open: {status:?}"));
            return None;
        }
    };
    stream_reply(soak, &mut responses, partition, values, &Probe::unsampled())
        .await
        .then_some(responses)
}

/// Awaits one ProduceStream reply; false when the stream ended.
async fn stream_reply(
    soak: &Soak,
    responses: &mut shardlog_wire::Streaming<pb::ProduceResponse>,
    partition: u32,
    values: Vec<Bytes>,
    probe: &Probe,
) -> bool {
    match responses.message().await {
        Ok(Some(response)) => {
            soak.sample(probe);
            soak.acknowledge(TOPIC_STREAM, partition, response.base_offset, values);
            true
        }
        Ok(None) => {
            soak.violation(format!("ProduceStream {partition} ended without a status"));
            false
        }
        Err(status) if status.code() == Code::UNAVAILABLE => {
            soak.refuse("stream");
            false
        }
        Err(status) => {
            soak.violation(format!("ProduceStream {partition}: {status:?}"));
            false
        }
    }
}

/// The client library's idempotent producer, keyed records (hashed over the
/// partitions), open loop; acknowledgements arrive through delivery futures.
async fn library_producer(soak: Rc<Soak>, addr: SocketAddr, batches_per_s: f64) {
    let client = Client::new(GlommioRuntime, addr, ClientConfig::default()).expect("client");
    let config = ProducerConfig {
        linger: Duration::from_millis(5),
        batch_bytes_max: 256 << 10,
        buffer_records_max: LIBRARY_PENDING_MAX,
        ..ProducerConfig::default()
    };
    let producer = client.producer(config).expect("producer");
    let mut pacer = Pacer::new(period_for(batches_per_s));
    let mut sequence = 0u64;
    while !soak.stop.get() {
        soak.ticks_skipped
            .set(soak.ticks_skipped.get() + pacer.next().await);
        if soak.unacknowledged_pending.get() + RECORDS_PER_BATCH > LIBRARY_PENDING_MAX {
            soak.ticks_skipped.set(soak.ticks_skipped.get() + 1);
            continue;
        }
        for _ in 0..RECORDS_PER_BATCH {
            // The writer is the key, so one writer's records share a partition
            // and their order there is the send order.
            let key = format!("key{}", sequence % 16);
            let value = value(&key, sequence, VALUE_BYTES);
            sequence += 1;
            let delivery = match producer
                .send(TOPIC_LIBRARY, Some(key.into()), value.clone())
                .await
            {
                Ok(delivery) => delivery,
                Err(error) => {
                    soak.violation(format!("library send: {error}"));
                    continue;
                }
            };
            soak.unacknowledged_pending
                .set(soak.unacknowledged_pending.get() + 1);
            let soak = soak.clone();
            glommio::spawn_local(async move {
                match delivery.await {
                    Ok(ack) => {
                        soak.acknowledge(TOPIC_LIBRARY, ack.partition, ack.offset, vec![value])
                    }
                    Err(error) => soak.violation(format!("library delivery: {error}")),
                }
                soak.unacknowledged_pending
                    .set(soak.unacknowledged_pending.get() - 1);
            })
            .detach();
        }
    }
    producer.close().await;
    while soak.unacknowledged_pending.get() > 0 {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
}

/// Checks that what a reader sees agrees with what was acknowledged so far.
fn check_seen(
    soak: &Soak,
    topic: &str,
    partition: u32,
    expected_offset: u64,
    records: &[pb::FetchedRecord],
) -> u64 {
    let mut next = expected_offset;
    let acknowledged = soak.acknowledged.borrow();
    let log = acknowledged.get(&(topic.to_owned(), partition));
    for record in records {
        if record.offset != next {
            let message = format!(
                "{topic}/{partition}: read offset {} where {next} was due",
                record.offset
            );
            drop(acknowledged);
            soak.violation(message);
            return record.offset + 1;
        }
        if let Some(value) = log.and_then(|log| log.get(&record.offset))
            && value != &record.value
        {
            let message =
                format!("{topic}/{partition}/{next}: read differs from the acknowledged value");
            drop(acknowledged);
            soak.violation(message);
            return next + 1;
        }
        next += 1;
    }
    next
}

/// Long-poll Fetch from offset 0 to the end, following the log.
async fn fetch_reader(soak: Rc<Soak>, log: Log, topic: &'static str, partition: u32) {
    let mut offset = 0u64;
    while !soak.stop.get() {
        let request = pb::FetchRequest {
            topic: topic.to_owned(),
            partition,
            offset,
            max_wait_ms: 200,
            ..Default::default()
        };
        match log.unary::<_, pb::FetchResponse>("Fetch", &request).await {
            Ok(response) => {
                soak.records_fetched
                    .set(soak.records_fetched.get() + response.records.len() as u64);
                offset = check_seen(&soak, topic, partition, offset, &response.records);
            }
            Err(status) => {
                soak.violation(format!("fetch {topic}/{partition}@{offset}: {status:?}"));
                glommio::timer::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A Subscribe from offset 0 that follows the tail.
async fn subscribe_follower(soak: Rc<Soak>, log: Log, topic: &'static str, partition: u32) {
    let request = pb::SubscribeRequest {
        topic: topic.to_owned(),
        partition,
        offset: 0,
        max_bytes: 0,
    };
    let mut stream = open_subscribe(&log.channel, &request)
        .await
        .expect("subscribe")
        .into_inner();
    let mut offset = 0u64;
    // Runs until its task is dropped at the end of the load.
    loop {
        match stream.message().await {
            Ok(Some(response)) => {
                soak.records_followed
                    .set(soak.records_followed.get() + response.records.len() as u64);
                offset = check_seen(&soak, topic, partition, offset, &response.records);
            }
            Ok(None) => {
                soak.violation(format!("subscribe {topic}/{partition} ended"));
                return;
            }
            Err(status) => {
                soak.violation(format!("subscribe {topic}/{partition}: {status:?}"));
                return;
            }
        }
    }
}

/// A connection whose socket the test can cut: the channel and a duplicate
/// of its socket descriptor.
async fn connect_cuttable(addr: SocketAddr) -> (Channel, std::os::fd::OwnedFd) {
    let stream = glommio::net::TcpStream::connect(addr)
        .await
        .expect("connect");
    // SAFETY: the descriptor is open (owned by `stream`); `dup` gives us our own.
    let duplicate = unsafe { libc::dup(stream.as_raw_fd()) };
    assert!(duplicate >= 0, "dup: {}", std::io::Error::last_os_error());
    // SAFETY: `duplicate` is a fresh descriptor nobody else owns.
    let duplicate =
        unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(duplicate) };
    let (channel, driver) = Channel::handshake(stream, &addr.to_string())
        .await
        .expect("handshake");
    glommio::spawn_local(driver).detach();
    (channel, duplicate)
}

/// Cuts a connection abruptly: linger 0 (the final close sends RST) and
/// shutdown both ways, with calls still open on it.
fn cut(socket: std::os::fd::OwnedFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket descriptor and a correctly sized option value.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
        libc::shutdown(socket.as_raw_fd(), libc::SHUT_RDWR);
    }
}

fn fault_request(tag: &str, value_bytes: usize) -> pb::ProduceRequest {
    produce_to(
        TOPIC_FAULTS,
        0,
        vec![pb::Record {
            value: value(tag, 0, value_bytes),
            ..common::record(b"")
        }],
    )
}

/// Expects `result` to carry `code`; anything else is a violation.
fn expect_status<T>(soak: &Soak, what: &str, result: Result<T, shardlog_wire::Status>, code: Code) {
    match result {
        Err(status) if status.code() == code => {}
        Err(status) => soak.violation(format!("{what}: expected {code:?}, got {status:?}")),
        Ok(_) => soak.violation(format!("{what}: expected {code:?}, got OK")),
    }
}

type StalledStream = shardlog_wire::Response<shardlog_wire::Streaming<pb::FetchResponse>>;

/// Injects one fault of `kind`; returns when its effect is over (stalled
/// subscribers stay open in `stalled` until evicted or the end).
async fn inject(
    soak: &Soak,
    addr: SocketAddr,
    log: &Log,
    kind: &'static str,
    serial: u64,
    stalled: &mut VecDeque<(StalledStream, std::os::fd::OwnedFd)>,
) {
    match kind {
        "connection_reset" => {
            let (channel, socket) = connect_cuttable(addr).await;
            let (mut sink, _responses) = open_produce_stream(&channel).await.expect("open stream");
            for _ in 0..3 {
                let _ = sink.send(&fault_request("reset", 1024)).await;
            }
            cut(socket);
        }
        "cancelled_stream" => {
            let (mut sink, _responses) = open_produce_stream(&log.channel)
                .await
                .expect("open stream");
            let _ = sink.send(&fault_request("cancel", 1024)).await;
            sink.cancel();
        }
        "deadline_1us" => {
            let result = log
                .channel
                .unary::<_, pb::ProduceResponse>(
                    "/shardlog.v1.Log/Produce",
                    &fault_request("deadline", 64),
                    options(Duration::from_micros(1)),
                )
                .await;
            expect_status(soak, "1 us deadline", result, Code::DEADLINE_EXCEEDED);
        }
        "bad_requests" => {
            let bad_name = produce_to("../soak", 0, vec![common::record(b"x")]);
            expect_status(
                soak,
                "bad topic name",
                log.produce(bad_name).await,
                Code::INVALID_ARGUMENT,
            );
            let bad_partition = produce_to(TOPIC_FAULTS, 99, vec![common::record(b"x")]);
            expect_status(
                soak,
                "partition out of range",
                log.produce(bad_partition).await,
                Code::NOT_FOUND,
            );
            let empty = produce_to(TOPIC_FAULTS, 0, Vec::new());
            expect_status(
                soak,
                "empty batch",
                log.produce(empty).await,
                Code::INVALID_ARGUMENT,
            );
            let unknown = produce_to("soak-no-such-topic", 0, vec![common::record(b"x")]);
            expect_status(
                soak,
                "unknown topic",
                log.produce(unknown).await,
                Code::NOT_FOUND,
            );
            // Field 1 (topic, a string) sent as a varint: undecodable.
            let garbage = pb::ProduceResponse {
                partition: 7,
                ..Default::default()
            };
            let result = log
                .unary::<_, pb::ProduceResponse>("Produce", &garbage)
                .await;
            expect_status(soak, "garbage protobuf", result, Code::INTERNAL);
        }
        "stalled_subscriber" => {
            if stalled.len() >= STALLED_SUBSCRIBERS_MAX
                && let Some((stream, socket)) = stalled.pop_front()
            {
                drop(stream);
                cut(socket);
            }
            let (channel, socket) = connect_cuttable(addr).await;
            let request = pb::SubscribeRequest {
                topic: TOPIC_UNARY.to_owned(),
                partition: (serial % u64::from(PARTITIONS_UNARY)) as u32,
                offset: 0,
                max_bytes: 0,
            };
            // Opened and never read until evicted.
            match open_subscribe(&channel, &request).await {
                Ok(stream) => stalled.push_back((stream, socket)),
                Err(status) => {
                    soak.violation(format!("stalled subscribe: {status:?}"));
                    cut(socket);
                }
            }
        }
        "burst_over_budget" => {
            let (channel, socket) = connect_cuttable(addr).await;
            let burst_log = Log { channel };
            let calls = (0..BURST_CALLS).map(|i| {
                let burst_log = burst_log.clone();
                async move {
                    let mut request = fault_request("burst", BURST_VALUE_BYTES);
                    request.partition = Some(i as u32 % PARTITIONS_FAULTS);
                    burst_log.produce(request).await
                }
            });
            for result in futures_util::future::join_all(calls).await {
                match result {
                    Ok(_) => {}
                    Err(status) if status.code() == Code::UNAVAILABLE => soak.refuse("burst"),
                    Err(status) => soak.violation(format!("burst: {status:?}")),
                }
            }
            cut(socket);
        }
        "topic_churn" => {
            let topic = format!("soak-churn-{serial}");
            if let Err(status) = log.create_topic(&topic, 1).await {
                soak.violation(format!("churn create {topic}: {status:?}"));
                return;
            }
            let produced = log
                .produce(produce_to(&topic, 0, vec![common::record(b"churn")]))
                .await;
            if let Err(status) = produced {
                soak.violation(format!("churn produce {topic}: {status:?}"));
            }
            match log.fetch(&topic, 0, 0).await {
                Ok(response) if response.records.len() == 1 => {}
                other => soak.violation(format!("churn fetch {topic}: {other:?}")),
            }
            let delete = pb::DeleteTopicRequest {
                topic: topic.clone(),
            };
            let deleted = log
                .unary::<_, pb::DeleteTopicResponse>("DeleteTopic", &delete)
                .await;
            if let Err(status) = deleted {
                soak.violation(format!("churn delete {topic}: {status:?}"));
            }
        }
        other => unreachable!("unknown fault kind {other}"),
    }
}

/// Injects faults at seeded random gaps until the load stops.
async fn fault_injector(soak: Rc<Soak>, addr: SocketAddr, seed: u64) {
    let mut rng = Rng(seed);
    let log = Log::connect(addr).await;
    let mut stalled = VecDeque::new();
    let mut serial = 0u64;
    while !soak.stop.get() {
        let gap_ms = FAULT_GAP_MS_MIN + rng.below(FAULT_GAP_MS_MAX - FAULT_GAP_MS_MIN);
        glommio::timer::sleep(Duration::from_millis(gap_ms)).await;
        if soak.stop.get() {
            break;
        }
        let kind = FAULT_KINDS[rng.below(FAULT_KINDS.len() as u64) as usize];
        soak.fault_started(kind);
        inject(&soak, addr, &log, kind, serial, &mut stalled).await;
        soak.fault_ended();
        serial += 1;
    }
    for (stream, socket) in stalled {
        drop(stream);
        cut(socket);
    }
}

/// One sample of the server process's resources.
#[derive(Debug, Clone, Copy)]
struct ResourceSample {
    at_ms: u64,
    /// Resident set, file-mapped pages included (segments are read through
    /// memory maps, so this follows what readers touched).
    rss_kib: u64,
    /// Anonymous resident memory: what a leak would grow.
    anon_kib: u64,
    open_fds: usize,
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS:`, `RssAnon:`); 0 if gone.
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(field))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kib| kib.parse().ok())
        })
        .unwrap_or(0)
}

/// Open descriptors of the process other than its topic data files
/// (sockets, the catalog, pipes): what a connection or handle leak grows.
/// Segment and index files are left out: their count follows the number of
/// segments on disk, which grows with the data by design.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |dir| {
        dir.flatten()
            .filter(|entry| {
                std::fs::read_link(entry.path()).map_or(true, |target| {
                    !target.to_string_lossy().contains("/topics/")
                })
            })
            .count()
    })
}

/// Samples RSS and open files every `SAMPLE_INTERVAL_MS` on its own thread.
fn start_sampler(pid: u32, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<ResourceSample>> {
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut samples = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            samples.push(ResourceSample {
                at_ms: start.elapsed().as_millis() as u64,
                rss_kib: status_kib(pid, "VmRSS:"),
                anon_kib: status_kib(pid, "RssAnon:"),
                open_fds: open_fds(pid),
            });
            std::thread::sleep(Duration::from_millis(SAMPLE_INTERVAL_MS));
        }
        samples
    })
}

fn percentile(sorted: &[u64], per_mille: usize) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[(sorted.len() * per_mille / 1000).min(sorted.len() - 1)]
}

/// The tail of each tenth of the load: the median over its one-second
/// windows of each window's p99 ack latency (us), with the tenth's sample
/// and window counts. The median of windows, not one p99 over the tenth,
/// so that a single stall from outside (another process on a shared
/// 2-core machine) does not decide; a real drift lifts every window.
fn tail_per_tenth(latencies: &[(u64, u64)], load_ms: u64) -> Vec<TenthTail> {
    let mut windows: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for &(at_ms, latency_us) in latencies {
        windows
            .entry(at_ms / WINDOW_MS)
            .or_default()
            .push(latency_us);
    }
    let tenth_ms = (load_ms / TENTHS as u64).max(1);
    let mut tenths = vec![(Vec::new(), 0usize); TENTHS];
    for (window, mut samples) in windows {
        let tenth = ((window * WINDOW_MS) / tenth_ms).min(TENTHS as u64 - 1) as usize;
        samples.sort_unstable();
        tenths[tenth].0.push(percentile(&samples, 990));
        tenths[tenth].1 += samples.len();
    }
    tenths
        .into_iter()
        .map(|(mut p99s, samples)| {
            p99s.sort_unstable();
            TenthTail {
                p99_us: percentile(&p99s, 500),
                samples,
                windows: p99s.len(),
            }
        })
        .collect()
}

#[derive(Debug, Clone, Copy)]
struct TenthTail {
    p99_us: u64,
    samples: usize,
    windows: usize,
}

/// Reads every tracked partition back and checks the acknowledged records:
/// present at their offsets, byte-identical, no value twice, contiguous
/// offsets, each ordered writer's records in its send order. Returns the
/// number of acknowledged records checked.
async fn check_stored(soak: &Soak, log: &Log) -> u64 {
    let mut checked = 0u64;
    let tracked = [
        (TOPIC_UNARY, PARTITIONS_UNARY),
        (TOPIC_STREAM, PARTITIONS_STREAM),
        (TOPIC_LIBRARY, PARTITIONS_LIBRARY),
    ];
    for (topic, partitions) in tracked {
        for partition in 0..partitions {
            let stored = log.fetch_all(topic, partition, 0).await;
            let acknowledged = soak
                .acknowledged
                .borrow()
                .get(&(topic.to_owned(), partition))
                .cloned()
                .unwrap_or_default();
            for violation in check_partition(topic, partition, &stored, &acknowledged) {
                soak.violation(violation);
            }
            checked += acknowledged.len() as u64;
        }
    }
    checked
}

fn check_partition(
    topic: &str,
    partition: u32,
    stored: &[pb::FetchedRecord],
    acknowledged: &BTreeMap<u64, Bytes>,
) -> Vec<String> {
    let mut violations = Vec::new();
    let mut values = HashSet::new();
    let mut last_sequence: HashMap<&[u8], u64> = HashMap::new();
    for (index, record) in stored.iter().enumerate() {
        if record.offset != index as u64 {
            violations.push(format!(
                "{topic}/{partition}: offsets not contiguous at {index}"
            ));
            break;
        }
        if !values.insert(&record.value[..]) {
            violations.push(format!(
                "{topic}/{partition}/{}: duplicate value",
                record.offset
            ));
        }
        let mut fields = record.value.splitn(3, |&byte| byte == b':');
        let (Some(writer), Some(sequence)) = (fields.next(), fields.next()) else {
            violations.push(format!(
                "{topic}/{partition}/{}: foreign value",
                record.offset
            ));
            continue;
        };
        let sequence: u64 = std::str::from_utf8(sequence)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(u64::MAX);
        // Concurrent unary calls have no order between them; a stream's
        // and the idempotent producer's records keep their send order.
        if topic != TOPIC_UNARY
            && let Some(&last) = last_sequence.get(writer)
            && sequence <= last
        {
            violations.push(format!(
                "{topic}/{partition}/{}: out of send order",
                record.offset
            ));
        }
        last_sequence.insert(writer, sequence);
    }
    for (offset, value) in acknowledged {
        match stored.get(*offset as usize) {
            Some(record) if record.offset == *offset && record.value == value => {}
            _ => violations.push(format!(
                "{topic}/{partition}/{offset}: acknowledged record lost or changed"
            )),
        }
    }
    violations
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
}

fn seed_from_env_or_clock() -> u64 {
    env_u64("SHARDLOG_SOAK_SEED").unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x5eed, |since| since.as_nanos() as u64);
        nanos | 1 // xorshift needs a non-zero state
    })
}

/// What the load phase hands to the checks.
struct Outcome {
    calibrated_batches_per_s: f64,
    load_batches_per_s: f64,
    load_ms: u64,
    records_checked: u64,
    latencies: Vec<(u64, u64)>,
    faults: BTreeMap<&'static str, u64>,
    refused: BTreeMap<&'static str, u64>,
    violations: Vec<String>,
    ticks_skipped: u64,
    records_fetched: u64,
    records_followed: u64,
}

async fn run_soak(addr: SocketAddr, load: Duration, seed: u64) -> Outcome {
    let log = Log::connect(addr).await;
    for (topic, partitions) in [
        (TOPIC_UNARY, PARTITIONS_UNARY),
        (TOPIC_STREAM, PARTITIONS_STREAM),
        (TOPIC_LIBRARY, PARTITIONS_LIBRARY),
        (TOPIC_FAULTS, PARTITIONS_FAULTS),
    ] {
        log.create_topic(topic, partitions)
            .await
            .expect("create topic");
    }
    let calibrated = calibrate(&log).await;
    let rate_max =
        env_u64("SHARDLOG_SOAK_BATCHES_PER_S_MAX").unwrap_or(LOAD_BATCHES_PER_S_MAX_DEFAULT) as f64;
    let target = (calibrated * LOAD_PERCENT as f64 / 100.0).min(rate_max);
    let share = |percent: u64| target * percent as f64 / 100.0;
    eprintln!(
        "soak: calibrated {calibrated:.0} batches/s ({CALIBRATION_CALLERS} callers, closed loop); load {target:.0} batches/s of {RECORDS_PER_BATCH} x {VALUE_BYTES} B ({LOAD_PERCENT}%, at most {rate_max:.0})"
    );
    let soak = Rc::new(Soak::default());
    let load_start = Instant::now();
    soak.load_start.set(Some(load_start));
    let mut tasks = vec![
        glommio::spawn_local(unary_producer(
            soak.clone(),
            Log::connect(addr).await,
            share(UNARY_SHARE_PERCENT),
        )),
        glommio::spawn_local(library_producer(
            soak.clone(),
            addr,
            share(LIBRARY_SHARE_PERCENT),
        )),
        glommio::spawn_local(fault_injector(soak.clone(), addr, seed)),
    ];
    let stream_log = Log::connect(addr).await;
    for partition in 0..PARTITIONS_STREAM {
        let rate = share(STREAM_SHARE_PERCENT) / f64::from(PARTITIONS_STREAM);
        tasks.push(glommio::spawn_local(stream_producer(
            soak.clone(),
            stream_log.clone(),
            partition,
            rate,
        )));
    }
    let reader_log = Log::connect(addr).await;
    for partition in 0..PARTITIONS_LIBRARY {
        tasks.push(glommio::spawn_local(fetch_reader(
            soak.clone(),
            reader_log.clone(),
            TOPIC_LIBRARY,
            partition,
        )));
    }
    let follower_log = Log::connect(addr).await;
    let followers: Vec<_> = (0..PARTITIONS_STREAM)
        .map(|partition| {
            glommio::spawn_local(subscribe_follower(
                soak.clone(),
                follower_log.clone(),
                TOPIC_STREAM,
                partition,
            ))
        })
        .collect();
    glommio::timer::sleep(load).await;
    soak.stop.set(true);
    let load_ms = load_start.elapsed().as_millis() as u64;
    for task in tasks {
        task.await;
    }
    // Give followers a moment to catch up, then stop them.
    glommio::timer::sleep(Duration::from_millis(500)).await;
    drop(followers);
    let records_checked = check_stored(&soak, &log).await;
    let latencies = soak.latencies.take();
    Outcome {
        calibrated_batches_per_s: calibrated,
        load_batches_per_s: target,
        load_ms,
        records_checked,
        latencies,
        faults: soak.faults.take(),
        refused: soak.refused.take(),
        violations: soak.violations.take(),
        ticks_skipped: soak.ticks_skipped.get(),
        records_fetched: soak.records_fetched.get(),
        records_followed: soak.records_followed.get(),
    }
}

#[test]
fn soak_mixed_load_with_faults_loses_nothing_and_stays_flat() {
    let load = Duration::from_secs(env_u64("SHARDLOG_SOAK_SECS").unwrap_or(SOAK_SECS_DEFAULT));
    let seed = seed_from_env_or_clock();
    let p99_floor_us = env_u64("SHARDLOG_SOAK_P99_FLOOR_US").unwrap_or(P99_NOISE_FLOOR_US_DEFAULT);
    eprintln!(
        "soak: seed {seed} (SHARDLOG_SOAK_SEED={seed} replays the fault schedule), load {load:?}"
    );
    let config = format!(
        "[storage]\nsegment_bytes_max = {SEGMENT_BYTES_MAX}\n[limits]\nmessage_bytes_max = 1048576\nrecord_bytes_max = 458752\nfetch_bytes_max = 458752\nproduce_inflight_bytes_max = {INFLIGHT_BYTES_MAX}\n"
    );
    let config_dir = tempfile::tempdir().expect("temp dir");
    let config_path = config_dir.path().join("shardlog.toml");
    std::fs::write(&config_path, config).expect("write config");
    let mut server = TestServer::start_with(
        SHARDS,
        &["--config", config_path.to_str().expect("utf-8 path")],
    );
    let addr = server.addr;
    let pid = server.pid();
    let sampler_stop = Arc::new(AtomicBool::new(false));
    let sampler = start_sampler(pid, sampler_stop.clone());
    let outcome = block_on(move || run_soak(addr, load, seed));
    // The fault connections are closed; let the server notice.
    std::thread::sleep(Duration::from_millis(500));
    let fds_final = open_fds(pid);
    sampler_stop.store(true, Ordering::Relaxed);
    let samples = sampler.join().expect("sampler");
    assert_eq!(server.stop(), Some(0), "clean shutdown after the soak");
    report_and_check(&outcome, &samples, fds_final, p99_floor_us);
}

/// Prints the summary and asserts every pass criterion.
fn report_and_check(
    outcome: &Outcome,
    samples: &[ResourceSample],
    fds_final: usize,
    p99_floor_us: u64,
) {
    let tenths = tail_per_tenth(&outcome.latencies, outcome.load_ms);
    let faults_total: u64 = outcome.faults.values().sum();
    // Warm-up: the calibration and the first fifth of the load.
    let total_ms = samples.last().map_or(0, |sample| sample.at_ms);
    let warm_ms = total_ms - outcome.load_ms * 4 / 5;
    let baseline: Vec<&ResourceSample> = samples
        .iter()
        .filter(|sample| sample.at_ms <= warm_ms && sample.at_ms + outcome.load_ms / 10 >= warm_ms)
        .collect();
    let late: Vec<&ResourceSample> = samples
        .iter()
        .filter(|sample| sample.at_ms + outcome.load_ms / 2 >= total_ms)
        .collect();
    let rss_baseline = baseline.iter().map(|s| s.anon_kib).max().unwrap_or(0);
    let rss_late = late.iter().map(|s| s.anon_kib).max().unwrap_or(0);
    let fds_baseline_max = baseline.iter().map(|s| s.open_fds).max().unwrap_or(0);
    let fds_baseline_min = baseline.iter().map(|s| s.open_fds).min().unwrap_or(0);
    let fds_late = late.iter().map(|s| s.open_fds).max().unwrap_or(0);
    let p99s: Vec<String> = tenths
        .iter()
        .map(|tail| format!("{:.1}ms/{}", tail.p99_us as f64 / 1000.0, tail.samples))
        .collect();
    eprintln!(
        "soak summary: {:.1} s load at {:.0} batches/s (calibrated {:.0}); {} acknowledged records checked, nothing lost or duplicated: {}; \
         faults injected {faults_total} {:?}; refused UNAVAILABLE {:?}; ticks skipped {}; fetched {} followed {}; \
         p99 ack latency per tenth (clean samples) [{}]; RssAnon KiB baseline {rss_baseline} late max {rss_late} (min {} max {} overall), VmRSS KiB min {} max {}; \
         open fds (data files excluded) baseline {fds_baseline_min}..{fds_baseline_max} late max {fds_late} final {fds_final}",
        outcome.load_ms as f64 / 1000.0,
        outcome.load_batches_per_s,
        outcome.calibrated_batches_per_s,
        outcome.records_checked,
        outcome.violations.is_empty(),
        outcome.faults,
        outcome.refused,
        outcome.ticks_skipped,
        outcome.records_fetched,
        outcome.records_followed,
        p99s.join(" "),
        samples.iter().map(|s| s.anon_kib).min().unwrap_or(0),
        samples.iter().map(|s| s.anon_kib).max().unwrap_or(0),
        samples.iter().map(|s| s.rss_kib).min().unwrap_or(0),
        samples.iter().map(|s| s.rss_kib).max().unwrap_or(0),
    );
    assert!(
        outcome.violations.is_empty(),
        "violations: {:#?}",
        outcome.violations
    );
    assert!(outcome.records_checked > 0, "the load got acknowledgements");
    assert!(faults_total > 0, "faults were injected");
    let (first, last) = (tenths[0], tenths[TENTHS - 1]);
    if first.windows.min(last.windows) >= WINDOWS_PER_TENTH_MIN {
        assert!(
            first.samples.min(last.samples) >= LATENCY_SAMPLES_PER_TENTH_MIN,
            "too few clean latency samples to compare ({first:?}, {last:?}; need {LATENCY_SAMPLES_PER_TENTH_MIN})"
        );
        let p99_bound =
            (first.p99_us * (100 + P99_DRIFT_PERCENT_MAX) / 100).max(first.p99_us + p99_floor_us);
        assert!(
            last.p99_us <= p99_bound,
            "p99 drift: last tenth {} us > bound {p99_bound} us (first tenth {} us)",
            last.p99_us,
            first.p99_us
        );
    } else {
        eprintln!(
            "soak: p99 drift not asserted: a tenth of this run has fewer than {WINDOWS_PER_TENTH_MIN} one-second windows"
        );
    }
    assert!(
        !baseline.is_empty() && !late.is_empty(),
        "resource samples taken"
    );
    let rss_bound = rss_baseline * (100 + RSS_GROWTH_PERCENT_MAX) / 100 + RSS_SLACK_KIB;
    assert!(
        rss_late <= rss_bound,
        "anonymous RSS grew: {rss_late} KiB > bound {rss_bound} KiB (baseline {rss_baseline} KiB)"
    );
    assert!(
        fds_late <= fds_baseline_max + FDS_SLACK,
        "open files grew: {fds_late} > {fds_baseline_max} + {FDS_SLACK}"
    );
    assert!(
        fds_final <= fds_baseline_min + FDS_FINAL_SLACK,
        "open files left after the faults: {fds_final} > {fds_baseline_min} + {FDS_FINAL_SLACK}"
    );
}
