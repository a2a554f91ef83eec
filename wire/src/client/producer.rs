//! The batching, idempotent producer.
//!
//! `send` puts a record in its partition's open batch (see
//! `client/accumulator.rs`) and returns a [`DeliveryFuture`] of
//! its (partition, offset). One sender task per pool connection owns the
//! partitions hashed to it and pipelines their sealed batches over one
//! ProduceStream, at most `inflight_batches_max` per partition; responses
//! come back in request order and resolve the batches.
//!
//! Failures: when the stream breaks with a transient status (UNAVAILABLE,
//! DEADLINE_EXCEEDED, connection loss), every in-flight batch goes back in
//! front of its partition's queue, and after a backoff the same requests
//! (same producer id and sequence) are resent in order: the server answers
//! those it already appended from its dedup table, so a retry never
//! duplicates. When it breaks with a caller error (INVALID_ARGUMENT,
//! NOT_FOUND, RESOURCE_EXHAUSTED, FAILED_PRECONDITION, ...) the status is
//! not attributable to one batch of the pipeline, so the batches that were
//! in flight are resent one at a time with unary Produce: each gets its
//! own verdict, the rejected one fails, later ones continue. A batch past
//! the retry budget or the delivery deadline fails as ambiguous and its
//! partition continues under a fresh producer id.
//!
//! Sequence verdicts (the server's `shardlog-sequence-error` trailer): a
//! *gap* means the partition holds nothing of the batch or of any later
//! one under its id (the server lost or never knew the producer's tail),
//! so the partition's batches restart from sequence 0 under a new id and
//! nothing fails; *stale* means the batch may be stored long ago, so the
//! batches ever sent fail as ambiguous. Batches are renumbered only under
//! a new id: a request of the old numbering still in flight can then only
//! be refused, never appended twice or taken for another batch.
//!
//! A live stream whose oldest batch in flight gets no reply within the
//! delivery timeout (a stalled server, a half-open connection) is broken
//! and its connection replaced.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::accumulator::{
    Batch, BatchLimits, BatchOutcome, DeliveryFuture, OutcomeResolved, PartitionQueue, fnv1a_64,
};
use super::connect::Client;
use super::error::{ClientError, RetryClass};
use super::runtime::Runtime;
use super::sync::Notify;
use super::{CallOptions, Channel};
use crate::proto::shardlog::v1 as pb;
use crate::status::{Code, Status};

/// Batches of one partition the server remembers for dedup
/// (`engine::producer::PRODUCER_BATCHES_MAX`): more in flight than this
/// and a retried batch could be answered "stale" instead of "duplicate".
pub const INFLIGHT_BATCHES_PER_PARTITION_MAX: usize = 5;

/// Bytes reserved for the request's own fields in a message next to the
/// records (`batch_bytes_max` + this <= the channel's message limit).
const REQUEST_HEADROOM_BYTES: usize = 64 * 1024;

/// Partitions of one topic the producer accepts from DescribeTopic (it
/// keeps a slot per partition): a larger count is refused, not allocated.
pub const TOPIC_PARTITIONS_MAX: u32 = 1 << 20;

/// Bounds of the period at which a sender checks its in-flight batches
/// against the delivery timeout (a quarter of the timeout, within these).
const DELIVERY_CHECK_INTERVAL_MIN: Duration = Duration::from_millis(10);
const DELIVERY_CHECK_INTERVAL_MAX: Duration = Duration::from_secs(1);

/// What `send` does when the buffer is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Wait for buffered records to be acknowledged (backpressure).
    Wait,
    /// Fail at once with [`ClientError::BufferFull`].
    Error,
}

/// Settings of a [`Producer`].
#[derive(Debug, Clone, PartialEq)]
pub struct ProducerConfig {
    /// Seal a partition's batch at this many records. Default 100.
    pub batch_records_max: usize,
    /// Seal a partition's batch at this many bytes (key + value + a fixed
    /// per-record overhead). Default 1 MiB.
    pub batch_bytes_max: usize,
    /// Seal a partition's batch this long after its first record.
    /// Default 100 ms.
    pub linger: Duration,
    /// Records buffered (unacknowledged) before `send` waits or fails.
    /// Default 100,000.
    pub buffer_records_max: usize,
    /// Bytes buffered before `send` waits or fails. Default 64 MiB.
    pub buffer_bytes_max: usize,
    /// Sealed batches of one partition on the wire at once, at most
    /// [`INFLIGHT_BATCHES_PER_PARTITION_MAX`]. Default 5.
    pub inflight_batches_max: usize,
    /// What a full buffer does to `send`. Default [`WhenFull::Wait`].
    pub when_full: WhenFull,
    /// Acknowledgement level. Default durable (after fdatasync).
    pub ack: pb::AckLevel,
    /// How long a sealed batch may take to be acknowledged, retries
    /// included, before it fails. Default 30 s.
    pub delivery_timeout: Duration,
}

impl Default for ProducerConfig {
    fn default() -> ProducerConfig {
        ProducerConfig {
            batch_records_max: 100,
            batch_bytes_max: 1024 * 1024,
            linger: Duration::from_millis(100),
            buffer_records_max: 100_000,
            buffer_bytes_max: 64 * 1024 * 1024,
            inflight_batches_max: INFLIGHT_BATCHES_PER_PARTITION_MAX,
            when_full: WhenFull::Wait,
            ack: pb::AckLevel::Durable,
            delivery_timeout: Duration::from_secs(30),
        }
    }
}

impl ProducerConfig {
    fn validate(&self, max_message_bytes: usize) -> Result<(), ClientError> {
        let invalid =
            |setting: &'static str, reason: String| ClientError::InvalidConfig { setting, reason };
        if self.batch_records_max == 0 {
            return Err(invalid("batch_records_max", "must be at least 1".into()));
        }
        if self.batch_bytes_max == 0
            || self.batch_bytes_max + REQUEST_HEADROOM_BYTES > max_message_bytes
        {
            return Err(invalid(
                "batch_bytes_max",
                format!(
                    "{} must be in 1..={} (message limit {max_message_bytes} minus headroom)",
                    self.batch_bytes_max,
                    max_message_bytes.saturating_sub(REQUEST_HEADROOM_BYTES)
                ),
            ));
        }
        if self.inflight_batches_max == 0
            || self.inflight_batches_max > INFLIGHT_BATCHES_PER_PARTITION_MAX
        {
            return Err(invalid(
                "inflight_batches_max",
                format!(
                    "{} not in 1..={INFLIGHT_BATCHES_PER_PARTITION_MAX}",
                    self.inflight_batches_max
                ),
            ));
        }
        if self.buffer_records_max < self.batch_records_max
            || self.buffer_bytes_max < self.batch_bytes_max
        {
            return Err(invalid(
                "buffer_records_max",
                "the buffer must hold at least one full batch".into(),
            ));
        }
        Ok(())
    }
}

/// Everything the producer's handles and sender tasks share.
struct Shared<R: Runtime> {
    client: Client<R>,
    config: ProducerConfig,
    state: RefCell<State>,
    /// One per pool slot: wakes its sender (batch opened/sealed, close).
    slot_wakeups: Vec<Notify>,
    /// Buffer space freed (a batch completed).
    space: Notify,
    closed: Cell<bool>,
    /// Sender tasks still running, and the wake-up when one ends.
    senders_running: Cell<usize>,
    sender_ended: Notify,
}

/// Counters of a producer's delivery work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProducerStats {
    /// Batches acknowledged by the server.
    pub batches_acked: u64,
    /// Acknowledged batches the server had already appended (a resend
    /// after a lost reply, answered from its dedup table).
    pub batches_duplicate: u64,
    /// Batches failed back to the caller.
    pub batches_failed: u64,
    /// ProduceStream sessions that broke (each followed by resends).
    pub stream_breaks: u64,
}

/// What the producer knows of one topic.
struct TopicQueues {
    /// The map's key, shared with the topic's queues.
    name: Rc<str>,
    partition_count: u32,
    /// `queue_index[p]`: partition `p`'s queue in `State::queues`, once used.
    queue_index: Vec<Option<usize>>,
    /// Where keyless records go while its open batch lasts.
    sticky_partition: Option<u32>,
}

#[derive(Default)]
struct State {
    stats: ProducerStats,
    /// Per topic: its partition count (learnt with DescribeTopic) and the
    /// index of each partition's queue, one hash lookup per record (`route`).
    topics: HashMap<Rc<str>, TopicQueues>,
    /// Every queue; `queues[i]` belongs to pool slot `i % slots`.
    queues: Vec<PartitionQueue>,
    round_robin: u32,
    buffered_records: usize,
    buffered_bytes: usize,
}

/// A batching, idempotent producer. Cheap to clone; clones share the
/// buffer. `!Send`. Dropping the last clone without [`close`](Self::close)
/// still delivers what is buffered, then stops the sender tasks.
pub struct Producer<R: Runtime> {
    shared: Rc<Shared<R>>,
    _stop: Rc<StopOnDrop<R>>,
}

impl<R: Runtime> Clone for Producer<R> {
    fn clone(&self) -> Producer<R> {
        Producer {
            shared: self.shared.clone(),
            _stop: self._stop.clone(),
        }
    }
}

impl<R: Runtime> std::fmt::Debug for Producer<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.shared.state.borrow();
        f.debug_struct("Producer")
            .field("partitions", &state.queues.len())
            .field("buffered_records", &state.buffered_records)
            .field("closed", &self.shared.closed.get())
            .finish_non_exhaustive()
    }
}

struct StopOnDrop<R: Runtime>(Rc<Shared<R>>);

impl<R: Runtime> Drop for StopOnDrop<R> {
    fn drop(&mut self) {
        self.0.close_now();
    }
}

impl<R: Runtime> Producer<R> {
    pub(crate) fn new(
        client: Client<R>,
        config: ProducerConfig,
    ) -> Result<Producer<R>, ClientError> {
        config.validate(client.inner.config.channel.max_message_bytes)?;
        let slots = client.inner.pool.size();
        let shared = Rc::new(Shared {
            client: client.clone(),
            config,
            state: RefCell::new(State::default()),
            slot_wakeups: (0..slots).map(|_| Notify::default()).collect(),
            space: Notify::default(),
            closed: Cell::new(false),
            senders_running: Cell::new(slots),
            sender_ended: Notify::default(),
        });
        for slot in 0..slots {
            let sender = Sender::new(shared.clone(), slot);
            client.inner.runtime.spawn(Box::pin(sender.run()));
        }
        Ok(Producer {
            _stop: Rc::new(StopOnDrop(shared.clone())),
            shared,
        })
    }

    /// Sends `value` (with an optional `key`) to `topic`: to partition
    /// `fnv1a_64(key) % partition_count` like the server; without a key,
    /// to one partition until its batch is sealed, then the next (sticky
    /// round robin: whole batches, not one record per partition per
    /// batch). Waits only for buffer space (and, on the first send
    /// to a topic, for its partition count); the returned future resolves
    /// with the record's partition and offset once acknowledged.
    pub async fn send(
        &self,
        topic: &str,
        key: Option<Bytes>,
        value: Bytes,
    ) -> Result<DeliveryFuture, ClientError> {
        self.send_record(topic, None, record(key, value)).await
    }

    /// [`send`](Self::send) to an explicit partition.
    pub async fn send_to(
        &self,
        topic: &str,
        partition: u32,
        key: Option<Bytes>,
        value: Bytes,
    ) -> Result<DeliveryFuture, ClientError> {
        self.send_record(topic, Some(partition), record(key, value))
            .await
    }

    /// Sends a full record (timestamp, headers) to `partition`, or to the
    /// partition its key hashes to when `None`.
    pub async fn send_record(
        &self,
        topic: &str,
        partition: Option<u32>,
        record: pb::Record,
    ) -> Result<DeliveryFuture, ClientError> {
        let shared = &self.shared;
        if shared.closed.get() {
            return Err(ClientError::Closed("producer closed"));
        }
        let record_bytes = PartitionQueue::record_bytes(&record);
        if record_bytes > shared.config.batch_bytes_max {
            return Err(ClientError::RecordTooLarge {
                record_bytes,
                batch_bytes_max: shared.config.batch_bytes_max,
            });
        }
        let queue = self
            .queue_for(topic, partition, record.key.as_deref())
            .await?;
        self.reserve(record_bytes).await?;
        shared.append(queue, record, record_bytes)
    }

    /// Seals every open batch now and waits until every record sent before
    /// this call is acknowledged or failed.
    pub async fn flush(&self) {
        let outcomes = self.shared.seal_all();
        for outcome in outcomes {
            OutcomeResolved(outcome).await;
        }
    }

    /// Refuses further sends, flushes, and waits for the sender tasks to
    /// end (their streams half-closed and answered).
    pub async fn close(&self) {
        self.shared.closed.set(true);
        self.flush().await;
        self.shared.close_now();
        loop {
            let ended = self.shared.sender_ended.notified();
            if self.shared.senders_running.get() == 0 {
                return;
            }
            ended.await;
        }
    }

    /// Delivery counters so far.
    pub fn stats(&self) -> ProducerStats {
        self.shared.state.borrow().stats
    }

    /// Records buffered and not yet acknowledged (or failed).
    pub fn buffered_records(&self) -> usize {
        self.shared.state.borrow().buffered_records
    }

    /// The queue a record for `topic` goes to: `partition`, or the one its key hashes to
    /// when `None`. Learns the topic's partition count with DescribeTopic on first use.
    async fn queue_for(
        &self,
        topic: &str,
        partition: Option<u32>,
        key: Option<&[u8]>,
    ) -> Result<usize, ClientError> {
        if let Some(routed) = self.shared.route(topic, partition, key) {
            return routed;
        }
        self.learn_topic(topic).await?;
        self.shared
            .route(topic, partition, key)
            .expect("a learnt topic stays known")
    }

    async fn learn_topic(&self, topic: &str) -> Result<(), ClientError> {
        let description = self.shared.client.admin().describe_topic(topic).await?;
        if !(1..=TOPIC_PARTITIONS_MAX).contains(&description.partition_count) {
            return Err(ClientError::Topic {
                topic: topic.to_owned(),
                reason: format!(
                    "the server reports {} partitions; a producer handles 1..={TOPIC_PARTITIONS_MAX}",
                    description.partition_count
                ),
            });
        }
        let count = description.partition_count;
        let name: Rc<str> = Rc::from(topic);
        let mut state = self.shared.state.borrow_mut();
        state
            .topics
            .entry(name.clone())
            .or_insert_with(|| TopicQueues {
                name,
                partition_count: count,
                queue_index: vec![None; count as usize],
                sticky_partition: None,
            });
        Ok(())
    }

    /// Takes buffer room for one record, waiting or failing when full.
    async fn reserve(&self, record_bytes: usize) -> Result<(), ClientError> {
        let shared = &self.shared;
        let config = &shared.config;
        loop {
            let waiting = shared.space.notified();
            {
                let mut state = shared.state.borrow_mut();
                let fits = state.buffered_records < config.buffer_records_max
                    && state.buffered_bytes + record_bytes <= config.buffer_bytes_max;
                if fits {
                    state.buffered_records += 1;
                    state.buffered_bytes += record_bytes;
                    return Ok(());
                }
                if config.when_full == WhenFull::Error {
                    return Err(ClientError::BufferFull {
                        buffered_records: state.buffered_records,
                        buffered_bytes: state.buffered_bytes,
                        buffer_records_max: config.buffer_records_max,
                        buffer_bytes_max: config.buffer_bytes_max,
                    });
                }
            }
            if shared.closed.get() {
                return Err(ClientError::Closed(
                    "producer closed while waiting for space",
                ));
            }
            // Buffer full: seal what is open so it can be sent and freed.
            shared.seal_all();
            waiting.await;
        }
    }
}

fn record(key: Option<Bytes>, value: Bytes) -> pb::Record {
    pb::Record {
        key,
        value,
        timestamp_ms: 0,
        headers: Vec::new(),
    }
}

impl<R: Runtime> Shared<R> {
    fn slots(&self) -> usize {
        self.slot_wakeups.len()
    }

    /// Appends a record whose buffer room (`record_bytes`) is reserved;
    /// refused (and the room returned) if the producer closed meanwhile: no
    /// sender would deliver it.
    fn append(
        &self,
        queue: usize,
        record: pb::Record,
        record_bytes: usize,
    ) -> Result<DeliveryFuture, ClientError> {
        let mut state = self.state.borrow_mut();
        if self.closed.get() {
            state.buffered_records -= 1;
            state.buffered_bytes -= record_bytes;
            drop(state);
            self.space.notify();
            return Err(ClientError::Closed("producer closed during the send"));
        }
        let (future, changed) = state.queues[queue].append(record, Instant::now);
        drop(state);
        if changed {
            self.slot_wakeups[queue % self.slots()].notify();
        }
        Ok(future)
    }

    /// The queue of (topic, chosen partition), created on first use; `None` while the
    /// topic's partition count is unknown. One hash lookup of the topic.
    fn route(
        &self,
        topic: &str,
        partition: Option<u32>,
        key: Option<&[u8]>,
    ) -> Option<Result<usize, ClientError>> {
        let mut state = self.state.borrow_mut();
        let State {
            topics,
            queues,
            round_robin,
            ..
        } = &mut *state;
        let known = topics.get_mut(topic)?;
        let count = known.partition_count;
        let partition = match (partition, key) {
            (Some(partition), _) if partition >= count => {
                return Some(Err(ClientError::Topic {
                    topic: topic.to_owned(),
                    reason: format!("partition {partition} out of range (count {count})"),
                }));
            }
            (Some(partition), _) => partition,
            (None, Some(key)) => (fnv1a_64(key) % u64::from(count)) as u32,
            (None, None) => {
                let open_batch = |partition: u32| {
                    known.queue_index[partition as usize]
                        .is_some_and(|index| queues[index].has_open_batch())
                };
                match known.sticky_partition {
                    Some(partition) if open_batch(partition) => partition,
                    _ => {
                        *round_robin = round_robin.wrapping_add(1);
                        let partition = *round_robin % count;
                        known.sticky_partition = Some(partition);
                        partition
                    }
                }
            }
        };
        let slot = &mut known.queue_index[partition as usize];
        if let Some(index) = *slot {
            return Some(Ok(index));
        }
        let index = queues.len();
        let limits = BatchLimits {
            records_max: self.config.batch_records_max,
            bytes_max: self.config.batch_bytes_max,
            linger: self.config.linger,
        };
        queues.push(PartitionQueue::new(
            known.name.clone(),
            partition,
            self.new_producer_id(),
            limits,
            self.config.ack as i32,
        ));
        *slot = Some(index);
        Some(Ok(index))
    }

    fn new_producer_id(&self) -> u64 {
        self.client.random_u64().max(1)
    }

    /// Seals every open batch; returns the newest outcome of each queue.
    fn seal_all(&self) -> Vec<Rc<BatchOutcome>> {
        let mut state = self.state.borrow_mut();
        let mut outcomes = Vec::new();
        for queue in &mut state.queues {
            queue.seal();
            outcomes.extend(queue.last_outcome());
        }
        drop(state);
        for wakeup in &self.slot_wakeups {
            wakeup.notify();
        }
        outcomes
    }

    fn close_now(&self) {
        self.closed.set(true);
        self.seal_all();
        self.space.notify();
    }

    /// Resolves a finished batch and frees its buffer room.
    fn complete(&self, batch: Batch, result: Result<u64, ClientError>) {
        {
            let mut state = self.state.borrow_mut();
            state.buffered_records -= batch.record_count();
            state.buffered_bytes -= batch.bytes;
            match &result {
                Ok(_) => state.stats.batches_acked += 1,
                Err(_) => state.stats.batches_failed += 1,
            }
        }
        batch.outcome.resolve(result);
        self.space.notify();
    }
}

/// Why a stream session ended.
struct Broken {
    error: ClientError,
}

impl From<ClientError> for Broken {
    fn from(error: ClientError) -> Broken {
        Broken { error }
    }
}

fn stream_error(status: Status) -> Broken {
    stream_error_of("ProduceStream", status)
}

fn stream_error_of(operation: &'static str, status: Status) -> Broken {
    Broken {
        error: ClientError::Status { operation, status },
    }
}

/// The sender task of one pool slot.
struct Sender<R: Runtime> {
    shared: Rc<Shared<R>>,
    slot: usize,
    /// Transient failures in a row (reset by any acknowledgement).
    failures: Cell<u32>,
    /// Queues whose front batch goes by unary Produce first, in the order
    /// the broken stream had them in flight.
    attribute: RefCell<VecDeque<usize>>,
}

const PRODUCE_STREAM: &str = "/shardlog.v1.Log/ProduceStream";
const PRODUCE: &str = "/shardlog.v1.Log/Produce";

impl<R: Runtime> Sender<R> {
    fn new(shared: Rc<Shared<R>>, slot: usize) -> Sender<R> {
        Sender {
            shared,
            slot,
            failures: Cell::new(0),
            attribute: RefCell::new(VecDeque::new()),
        }
    }

    /// Indices of this slot's queues among the first `queue_count`.
    fn my_queues(&self, queue_count: usize) -> std::iter::StepBy<std::ops::Range<usize>> {
        (self.slot..queue_count).step_by(self.shared.slots())
    }

    fn queue_count(&self) -> usize {
        self.shared.state.borrow().queues.len()
    }

    async fn run(self) {
        self.send_until_closed().await;
        let shared = &self.shared;
        shared.senders_running.set(shared.senders_running.get() - 1);
        shared.sender_ended.notify();
    }

    async fn send_until_closed(&self) {
        loop {
            if !self.wait_for_work().await {
                return;
            }
            let result = self.session().await;
            let had_inflight = self.requeue_inflight();
            let Err(broken) = result else {
                continue;
            };
            self.on_broken(broken.error, had_inflight).await;
        }
    }

    /// Waits until a batch is ready to send; false once closed and idle.
    async fn wait_for_work(&self) -> bool {
        loop {
            let wakeup = self.shared.slot_wakeups[self.slot].notified();
            let next_linger = self.seal_lingered();
            if self.has_ready() {
                return true;
            }
            if self.shared.closed.get() && self.is_idle() {
                return false;
            }
            self.sleep_until(wakeup, next_linger).await;
        }
    }

    async fn sleep_until(&self, wakeup: super::sync::Notified<'_>, deadline: Option<Instant>) {
        match deadline {
            Some(deadline) => {
                let delay = deadline.saturating_duration_since(Instant::now());
                let sleep = self.shared.client.inner.runtime.sleep(delay);
                futures_lite::future::or(wakeup, sleep).await;
            }
            None => wakeup.await,
        }
    }

    /// Seals lingered batches; returns the next linger deadline.
    fn seal_lingered(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut state = self.shared.state.borrow_mut();
        let mut next = None::<Instant>;
        for index in self.my_queues(state.queues.len()) {
            let queue = &mut state.queues[index];
            queue.seal_if_lingered(now);
            if let Some(deadline) = queue.linger_deadline() {
                next = Some(next.map_or(deadline, |n| n.min(deadline)));
            }
        }
        next
    }

    fn has_ready(&self) -> bool {
        let state = self.shared.state.borrow();
        self.my_queues(state.queues.len())
            .any(|index| !state.queues[index].ready.is_empty())
    }

    fn is_idle(&self) -> bool {
        let state = self.shared.state.borrow();
        self.my_queues(state.queues.len())
            .all(|index| state.queues[index].is_idle())
    }

    /// One connection's worth of sending: unary attribution first (after a
    /// caller-error break), then a pipelined ProduceStream.
    async fn session(&self) -> Result<(), Broken> {
        let channel = self.shared.client.inner.pool.channel(self.slot).await?;
        self.attribute_unary(&channel).await?;
        self.expire_overdue();
        let (mut sink, response) = channel
            .bidi_streaming::<pb::ProduceRequest, pb::ProduceResponse>(
                PRODUCE_STREAM,
                CallOptions::default(),
            )
            .await
            .map_err(stream_error)?;
        let order = RefCell::new(VecDeque::<usize>::new());
        let writer_done = Cell::new(false);
        let writer = async {
            let result = self.write(&mut sink, &order).await;
            writer_done.set(true);
            result
        };
        let reader = async {
            let mut stream = response
                .response()
                .await
                .map_err(stream_error)?
                .into_inner();
            loop {
                match stream.message().await.map_err(stream_error)? {
                    Some(reply) => self.on_reply(&order, reply)?,
                    None if writer_done.get() && order.borrow().is_empty() => return Ok(()),
                    None => {
                        return Err(stream_error(Status::unavailable(
                            "ProduceStream ended early",
                        )));
                    }
                }
            }
        };
        let exchange = async {
            futures_lite::future::try_zip(writer, reader)
                .await
                .map(|_| ())
        };
        let result = futures_lite::future::or(exchange, self.watch_delivery_timeout()).await;
        if result.is_err() {
            sink.cancel();
        }
        result
    }

    /// Ends a live session whose oldest in-flight batch is past the
    /// delivery timeout: without this a stalled server or a half-open
    /// connection (no error, no reply) would hold its batches for ever.
    /// Never returns otherwise.
    async fn watch_delivery_timeout(&self) -> Result<(), Broken> {
        let timeout = self.shared.config.delivery_timeout;
        let interval =
            (timeout / 4).clamp(DELIVERY_CHECK_INTERVAL_MIN, DELIVERY_CHECK_INTERVAL_MAX);
        loop {
            self.shared.client.inner.runtime.sleep(interval).await;
            if self.oldest_inflight_age().is_some_and(|age| age > timeout) {
                return Err(stream_error(Status::deadline_exceeded(format!(
                    "ProduceStream: a batch in flight got no reply within {timeout:?}"
                ))));
            }
        }
    }

    /// How long ago the oldest batch in flight on this slot was sealed.
    fn oldest_inflight_age(&self) -> Option<Duration> {
        let state = self.shared.state.borrow();
        self.my_queues(state.queues.len())
            .filter_map(|index| state.queues[index].inflight.front())
            .map(|batch| batch.sealed_at.elapsed())
            .max()
    }

    /// Sends ready batches while the partition windows allow; half-closes
    /// once the producer is closed and idle.
    async fn write(
        &self,
        sink: &mut super::RequestSink<pb::ProduceRequest>,
        order: &RefCell<VecDeque<usize>>,
    ) -> Result<(), Broken> {
        loop {
            let wakeup = self.shared.slot_wakeups[self.slot].notified();
            let next_linger = self.seal_lingered();
            if let Some((index, request)) = self.take_sendable() {
                order.borrow_mut().push_back(index);
                sink.send(&request).await.map_err(stream_error)?;
                continue;
            }
            if self.shared.closed.get() && self.is_idle() {
                sink.finish().map_err(stream_error)?;
                return Ok(());
            }
            self.sleep_until(wakeup, next_linger).await;
        }
    }

    /// The next batch to send, moved to its queue's in-flight list.
    fn take_sendable(&self) -> Option<(usize, Rc<pb::ProduceRequest>)> {
        let window = self.shared.config.inflight_batches_max;
        let mut state = self.shared.state.borrow_mut();
        for index in self.my_queues(state.queues.len()) {
            let queue = &mut state.queues[index];
            if queue.inflight.len() >= window {
                continue;
            }
            if let Some(mut batch) = queue.ready.pop_front() {
                batch.sent = true;
                let request = batch.request.clone();
                queue.inflight.push_back(batch);
                return Some((index, request));
            }
        }
        None
    }

    fn on_reply(
        &self,
        order: &RefCell<VecDeque<usize>>,
        reply: pb::ProduceResponse,
    ) -> Result<(), Broken> {
        let Some(index) = order.borrow_mut().pop_front() else {
            return Err(stream_error(Status::internal(
                "ProduceStream reply without a request",
            )));
        };
        let batch = {
            let mut state = self.shared.state.borrow_mut();
            state.queues[index].inflight.pop_front()
        };
        let Some(batch) = batch else {
            return Err(stream_error(Status::internal(
                "reply for a batch not in flight",
            )));
        };
        self.acknowledge(batch, &reply);
        self.shared.slot_wakeups[self.slot].notify();
        Ok(())
    }

    fn acknowledge(&self, batch: Batch, reply: &pb::ProduceResponse) {
        self.failures.set(0);
        if reply.duplicate {
            self.shared.state.borrow_mut().stats.batches_duplicate += 1;
        }
        let expected = (batch.request.partition, batch.record_count());
        let got = (Some(reply.partition), reply.record_count as usize);
        let result = if expected == got {
            Ok(reply.base_offset)
        } else {
            Err(ClientError::Status {
                operation: "Produce",
                status: Status::internal(format!(
                    "reply for {got:?} (partition, records) does not match the batch's {expected:?}"
                )),
            })
        };
        self.shared.complete(batch, result);
    }

    /// Moves every in-flight batch back to its queue's front; returns the
    /// queues in the order their batches were in flight (oldest first).
    fn requeue_inflight(&self) -> Vec<usize> {
        let mut state = self.shared.state.borrow_mut();
        let mut order = Vec::new();
        for index in self.my_queues(state.queues.len()) {
            let queue = &mut state.queues[index];
            order.extend(std::iter::repeat_n(index, queue.inflight.len()));
            queue.requeue();
        }
        order
    }

    async fn on_broken(&self, error: ClientError, had_inflight: Vec<usize>) {
        self.shared.state.borrow_mut().stats.stream_breaks += 1;
        match error.retry_class() {
            RetryClass::Fatal if !had_inflight.is_empty() => {
                tracing::debug!(%error, "produce stream failed; resending its batches one by one");
                self.attribute.borrow_mut().extend(had_inflight);
            }
            _ if had_inflight.is_empty() && !self.has_ready() => {
                // An idle stream ended (idle timeout, restart): reconnect
                // lazily when there is work, without spending retries.
                tracing::debug!(%error, "idle produce stream ended");
            }
            _ => {
                tracing::debug!(%error, "produce stream failed; retrying after backoff");
                // A lost connection, or one where replies stopped coming
                // (the delivery watchdog), is replaced; a server's own
                // UNAVAILABLE (overloaded, draining) keeps it.
                let replace = match &error {
                    ClientError::Connect { .. } => true,
                    ClientError::Status { status, .. } => {
                        status.connection_lost() || status.code() == Code::DEADLINE_EXCEEDED
                    }
                    _ => false,
                };
                if replace {
                    self.shared.client.inner.pool.mark_broken(self.slot);
                }
                let failures = self.failures.get() + 1;
                self.failures.set(failures);
                if failures > self.shared.client.inner.config.retry.retries_max {
                    self.give_up(&error);
                    self.failures.set(0);
                }
                self.expire_overdue();
                self.shared.client.backoff(failures - 1).await;
            }
        }
    }

    /// Resends the batches a broken stream had in flight, one unary call
    /// each, so a caller error lands on the batch that caused it.
    async fn attribute_unary(&self, channel: &Channel) -> Result<(), Broken> {
        loop {
            let Some(index) = self.attribute.borrow().front().copied() else {
                return Ok(());
            };
            let front = {
                let mut state = self.shared.state.borrow_mut();
                state.queues[index].ready.front_mut().map(|batch| {
                    batch.sent = true;
                    batch.request.clone()
                })
            };
            let Some(request) = front else {
                self.attribute.borrow_mut().pop_front();
                continue;
            };
            let options = CallOptions::default()
                .with_timeout(self.shared.client.inner.config.request_timeout);
            let reply = channel
                .unary::<_, pb::ProduceResponse>(PRODUCE, &*request, options)
                .await
                .map(|reply| reply.into_inner());
            if let Err(status) = &reply
                && super::error::classify(status.code()) == RetryClass::Retry
            {
                // Transient: the batch stays first in line for the next session.
                return Err(stream_error_of("Produce", status.clone()));
            }
            self.attribute.borrow_mut().pop_front();
            self.settle_unary(index, reply);
        }
    }

    /// Applies the verdict on queue `index`'s front batch (a reply, or a
    /// status that is not transient).
    fn settle_unary(&self, index: usize, reply: Result<pb::ProduceResponse, Status>) {
        let status = match reply {
            Ok(reply) => {
                let batch = self.shared.state.borrow_mut().queues[index]
                    .ready
                    .pop_front();
                if let Some(batch) = batch {
                    self.acknowledge(batch, &reply);
                }
                return;
            }
            Err(status) => status,
        };
        let sequence_error = status.metadata().get(pb::SEQUENCE_ERROR_TRAILER);
        let front_sequence = self.shared.state.borrow().queues[index].front_sequence();
        let error = ClientError::Status {
            operation: "Produce",
            status: status.clone(),
        };
        match sequence_error {
            // The partition holds nothing of this batch or the later ones
            // under this id (it lost or never knew the producer's tail):
            // all restart under a new id, the front first in line again.
            Some(pb::SEQUENCE_GAP) if front_sequence != Some(0) => {
                tracing::debug!(%status, "produce sequence gap; restarting under a new producer id");
                let producer_id = self.shared.new_producer_id();
                self.shared.state.borrow_mut().queues[index].restart(producer_id);
                self.attribute.borrow_mut().push_front(index);
            }
            // Older than what the partition remembers: it may be stored.
            Some(pb::SEQUENCE_STALE) => self.abandon(index, &error),
            _ => {
                let producer_id = self.shared.new_producer_id();
                let rejected =
                    self.shared.state.borrow_mut().queues[index].reject_front(producer_id);
                if let Some(batch) = rejected {
                    self.shared.complete(batch, Err(error));
                }
            }
        }
    }

    /// Fails front batches sealed longer than the delivery timeout ago.
    fn expire_overdue(&self) {
        let timeout = self.shared.config.delivery_timeout;
        let overdue: Vec<usize> = {
            let state = self.shared.state.borrow();
            self.my_queues(state.queues.len())
                .filter(|index| {
                    state.queues[*index]
                        .ready
                        .front()
                        .is_some_and(|batch| batch.sealed_at.elapsed() > timeout)
                })
                .collect()
        };
        for index in overdue {
            let error = Status::deadline_exceeded(format!("not acknowledged within {timeout:?}"));
            self.abandon(
                index,
                &ClientError::Status {
                    operation: "Produce",
                    status: error,
                },
            );
        }
    }

    /// Retries exhausted: fails every sealed batch of this slot (those
    /// ever sent as ambiguous); the partitions continue under fresh
    /// producer ids.
    fn give_up(&self, error: &ClientError) {
        for index in self.my_queues(self.queue_count()) {
            self.abandon(index, error);
            let producer_id = self.shared.new_producer_id();
            let unsent = self.shared.state.borrow_mut().queues[index].fail_all(producer_id);
            for batch in unsent {
                let failed = ClientError::Status {
                    operation: "Produce",
                    status: Status::unavailable(format!("not sent: {error}")),
                };
                self.shared.complete(batch, Err(failed));
            }
        }
        self.attribute.borrow_mut().clear();
    }

    fn abandon(&self, index: usize, error: &ClientError) {
        let producer_id = self.shared.new_producer_id();
        let (abandoned, topic, partition) = {
            let mut state = self.shared.state.borrow_mut();
            let queue = &mut state.queues[index];
            (
                queue.abandon_sent(producer_id),
                queue.topic.to_string(),
                queue.partition,
            )
        };
        self.attribute
            .borrow_mut()
            .retain(|queued| *queued != index);
        for batch in abandoned {
            let failed = ClientError::DeliveryFailed {
                topic: topic.clone(),
                partition,
                attempts: self.failures.get(),
                elapsed_ms: u64::try_from(batch.sealed_at.elapsed().as_millis())
                    .unwrap_or(u64::MAX),
                last_error: error.to_string(),
            };
            self.shared.complete(batch, Err(failed));
        }
    }
}
