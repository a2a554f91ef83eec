//! Per-partition batching and sequencing of the producer, free of I/O so
//! the triggers are unit-tested without a server.
//!
//! A [`PartitionQueue`] holds one open batch collecting records, then the
//! sealed batches in order: `ready` (not sent on the current stream) then
//! `inflight` (sent, awaiting their responses, in order). A batch is sealed
//! when it reaches `batch_records_max` records or `batch_bytes_max` bytes,
//! when it has been open for `linger`, or on flush. Sealing assigns the
//! idempotence sequence (the first record's number under the partition's
//! producer id), so a resent batch carries the same sequence and the
//! server answers it from its dedup table instead of appending it again.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::error::ClientError;
use crate::proto::shardlog::v1 as pb;

/// Bytes a record costs in a batch besides its key and value (protobuf
/// tags, lengths, timestamp): keeps `batch_bytes_max` an honest bound of
/// the encoded request.
pub const RECORD_OVERHEAD_BYTES: usize = 24;
/// Bytes a header costs besides its key and value (tags, lengths).
pub const HEADER_OVERHEAD_BYTES: usize = 12;

/// FNV-1a 64-bit: the server's key hash (`server/src/catalog.rs`), so a
/// keyed record goes to the partition the server would pick.
pub fn fnv1a_64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(PRIME)
    })
}

/// Where an acknowledged record was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ack {
    /// The partition.
    pub partition: u32,
    /// The record's offset in the partition.
    pub offset: u64,
}

/// The shared outcome of one batch: its base offset, or why it failed.
#[derive(Debug)]
pub(crate) struct BatchOutcome {
    partition: u32,
    result: RefCell<Option<Result<u64, ClientError>>>,
    wakers: RefCell<Vec<Waker>>,
}

impl BatchOutcome {
    fn new(partition: u32) -> Rc<BatchOutcome> {
        Rc::new(BatchOutcome {
            partition,
            result: RefCell::new(None),
            wakers: RefCell::new(Vec::new()),
        })
    }

    /// Resolves the batch (first resolution wins) and wakes its waiters.
    pub(crate) fn resolve(&self, result: Result<u64, ClientError>) {
        {
            let mut slot = self.result.borrow_mut();
            if slot.is_some() {
                return;
            }
            *slot = Some(result);
        }
        let wakers = std::mem::take(&mut *self.wakers.borrow_mut());
        for waker in wakers {
            waker.wake();
        }
    }

    fn poll_index(&self, index: u32, cx: &mut Context<'_>) -> Poll<Result<Ack, ClientError>> {
        match &*self.result.borrow() {
            Some(Ok(base_offset)) => Poll::Ready(
                base_offset
                    .checked_add(u64::from(index))
                    .map(|offset| Ack {
                        partition: self.partition,
                        offset,
                    })
                    .ok_or_else(|| ClientError::Status {
                        operation: "Produce",
                        status: crate::Status::internal(format!(
                            "base offset {base_offset} from the server leaves no room for record {index}"
                        )),
                    }),
            ),
            Some(Err(error)) => Poll::Ready(Err(error.clone())),
            None => {
                let mut wakers = self.wakers.borrow_mut();
                if !wakers.iter().any(|waker| waker.will_wake(cx.waker())) {
                    wakers.push(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}

/// Resolves once a batch's outcome is known (any record's view).
pub(crate) struct OutcomeResolved(pub(crate) Rc<BatchOutcome>);

impl Future for OutcomeResolved {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.poll_index(0, cx).map(|_| ())
    }
}

/// The future of one sent record: its partition and offset once the
/// server acknowledged it (durably by default), or why it failed.
#[derive(Debug)]
pub struct DeliveryFuture {
    outcome: Rc<BatchOutcome>,
    index: u32,
}

impl Future for DeliveryFuture {
    type Output = Result<Ack, ClientError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.outcome.poll_index(self.index, cx)
    }
}

/// Batch limits of a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchLimits {
    pub(crate) records_max: usize,
    pub(crate) bytes_max: usize,
    pub(crate) linger: Duration,
}

/// The batch collecting records.
#[derive(Debug)]
struct OpenBatch {
    records: Vec<pb::Record>,
    bytes: usize,
    opened_at: Instant,
    outcome: Rc<BatchOutcome>,
}

/// A sealed batch: a complete request, sent as is on every attempt.
#[derive(Debug)]
pub(crate) struct Batch {
    pub(crate) request: Rc<pb::ProduceRequest>,
    pub(crate) outcome: Rc<BatchOutcome>,
    pub(crate) bytes: usize,
    pub(crate) sealed_at: Instant,
    /// Whether any attempt put it on the wire (then its fate is unknown
    /// until a response for it arrives).
    pub(crate) sent: bool,
}

impl Batch {
    pub(crate) fn record_count(&self) -> usize {
        self.request.records.len()
    }

    fn sequence(&self) -> u64 {
        self.request.sequence.unwrap_or(0)
    }

    fn renumber(&mut self, producer_id: u64, sequence: u64) {
        let request = Rc::make_mut(&mut self.request);
        request.producer_id = producer_id;
        request.sequence = Some(sequence);
    }
}

/// The batches of one (topic, partition), in order.
#[derive(Debug)]
pub(crate) struct PartitionQueue {
    pub(crate) topic: Rc<str>,
    pub(crate) partition: u32,
    pub(crate) ack: i32,
    producer_id: u64,
    next_sequence: u64,
    limits: BatchLimits,
    open: Option<OpenBatch>,
    pub(crate) ready: VecDeque<Batch>,
    pub(crate) inflight: VecDeque<Batch>,
}

impl PartitionQueue {
    pub(crate) fn new(
        topic: Rc<str>,
        partition: u32,
        producer_id: u64,
        limits: BatchLimits,
        ack: i32,
    ) -> PartitionQueue {
        assert!(producer_id != 0, "producer id 0 means not idempotent");
        assert!(limits.records_max > 0 && limits.bytes_max > 0);
        PartitionQueue {
            topic,
            partition,
            ack,
            producer_id,
            next_sequence: 0,
            limits,
            open: None,
            ready: VecDeque::new(),
            inflight: VecDeque::new(),
        }
    }

    /// The bytes a record counts for in a batch: key, value and headers,
    /// plus their framing.
    pub(crate) fn record_bytes(record: &pb::Record) -> usize {
        let headers_bytes: usize = record
            .headers
            .iter()
            .map(|header| header.key.len() + header.value.len() + HEADER_OVERHEAD_BYTES)
            .sum();
        record.key.as_ref().map_or(0, Bytes::len)
            + record.value.len()
            + headers_bytes
            + RECORD_OVERHEAD_BYTES
    }

    /// Adds a record to the open batch (sealing the open batch first if
    /// the record does not fit, and after if the batch is then full).
    /// Returns the record's future and whether a batch was sealed or
    /// opened (the sender then needs a wake-up). `now` is read only when a
    /// batch opens (the clock is a measurable share of a send).
    pub(crate) fn append(
        &mut self,
        record: pb::Record,
        now: impl FnOnce() -> Instant,
    ) -> (DeliveryFuture, bool) {
        let record_bytes = Self::record_bytes(&record);
        let mut changed = false;
        if let Some(open) = &self.open
            && open.bytes + record_bytes > self.limits.bytes_max
        {
            self.seal();
            changed = true;
        }
        let open = self.open.get_or_insert_with(|| {
            changed = true;
            OpenBatch {
                records: Vec::with_capacity(self.limits.records_max.min(1024)),
                bytes: 0,
                opened_at: now(),
                outcome: BatchOutcome::new(self.partition),
            }
        });
        let index = u32::try_from(open.records.len()).unwrap_or(u32::MAX);
        open.records.push(record);
        open.bytes += record_bytes;
        let future = DeliveryFuture {
            outcome: open.outcome.clone(),
            index,
        };
        if open.records.len() >= self.limits.records_max || open.bytes >= self.limits.bytes_max {
            self.seal();
            changed = true;
        }
        (future, changed)
    }

    /// Seals the open batch if it has lingered long enough.
    pub(crate) fn seal_if_lingered(&mut self, now: Instant) -> bool {
        let lingered = self.open.as_ref().is_some_and(|open| {
            now.saturating_duration_since(open.opened_at) >= self.limits.linger
        });
        if lingered {
            self.seal();
        }
        lingered
    }

    /// When the open batch's linger runs out.
    pub(crate) fn linger_deadline(&self) -> Option<Instant> {
        self.open
            .as_ref()
            .map(|open| open.opened_at + self.limits.linger)
    }

    /// Seals the open batch (if any): assigns its sequence, queues it.
    pub(crate) fn seal(&mut self) {
        let Some(open) = self.open.take() else {
            return;
        };
        assert!(!open.records.is_empty(), "an open batch has a record");
        let count = open.records.len() as u64;
        let request = pb::ProduceRequest {
            topic: self.topic.to_string(),
            partition: Some(self.partition),
            records: open.records,
            producer_id: self.producer_id,
            sequence: Some(self.next_sequence),
            ack: self.ack,
        };
        self.next_sequence += count;
        self.ready.push_back(Batch {
            request: Rc::new(request),
            outcome: open.outcome,
            bytes: open.bytes,
            sealed_at: Instant::now(),
            sent: false,
        });
    }

    /// The outcome of the newest batch, sealed or open.
    pub(crate) fn last_outcome(&self) -> Option<Rc<BatchOutcome>> {
        self.open
            .as_ref()
            .map(|open| open.outcome.clone())
            .or_else(|| self.ready.back().map(|batch| batch.outcome.clone()))
            .or_else(|| self.inflight.back().map(|batch| batch.outcome.clone()))
    }

    /// Whether a batch is collecting records.
    pub(crate) fn has_open_batch(&self) -> bool {
        self.open.is_some()
    }

    /// Whether anything is open, ready or in flight.
    pub(crate) fn is_idle(&self) -> bool {
        self.open.is_none() && self.ready.is_empty() && self.inflight.is_empty()
    }

    /// Puts the in-flight batches back in front of the ready ones (the
    /// stream carrying them broke), keeping their order.
    pub(crate) fn requeue(&mut self) {
        while let Some(batch) = self.inflight.pop_back() {
            self.ready.push_front(batch);
        }
    }

    /// The server definitively rejected the front ready batch: removes it
    /// and restarts the later sealed batches under `new_producer_id` (the
    /// server appended none of them: under the old id they follow a batch
    /// it never appended, so they could only be gaps).
    pub(crate) fn reject_front(&mut self, new_producer_id: u64) -> Option<Batch> {
        let rejected = self.ready.pop_front()?;
        self.restart(new_producer_id);
        Some(rejected)
    }

    /// Renumbers every sealed batch from sequence 0 under
    /// `new_producer_id`, as never sent: for when the server holds none of
    /// them under the current id (a sequence gap at the front).
    ///
    /// Never renumbered under the same id: a request of the old numbering
    /// still in flight could then be appended as well, or be answered as
    /// the duplicate of a different batch.
    pub(crate) fn restart(&mut self, new_producer_id: u64) {
        assert!(self.inflight.is_empty(), "requeue before restarting");
        assert!(new_producer_id != 0);
        self.producer_id = new_producer_id;
        self.next_sequence = 0;
        for batch in &mut self.ready {
            batch.renumber(new_producer_id, self.next_sequence);
            batch.sent = false;
            self.next_sequence += batch.record_count() as u64;
        }
    }

    /// The front ready batch's sequence, if any.
    pub(crate) fn front_sequence(&self) -> Option<u64> {
        self.ready.front().map(Batch::sequence)
    }

    /// The fate of the sent batches is unknown and retries are over:
    /// removes every batch that was ever sent (to be failed as ambiguous),
    /// and continues under `new_producer_id` from sequence 0, renumbering
    /// the never-sent batches.
    pub(crate) fn abandon_sent(&mut self, new_producer_id: u64) -> Vec<Batch> {
        assert!(self.inflight.is_empty(), "requeue before abandoning");
        assert!(new_producer_id != 0);
        let (sent, unsent): (Vec<Batch>, Vec<Batch>) =
            self.ready.drain(..).partition(|batch| batch.sent);
        self.producer_id = new_producer_id;
        self.next_sequence = 0;
        for mut batch in unsent {
            batch.renumber(new_producer_id, self.next_sequence);
            self.next_sequence += batch.record_count() as u64;
            self.ready.push_back(batch);
        }
        sent
    }

    /// Removes every sealed batch (to be failed) and continues under
    /// `new_producer_id` from sequence 0.
    pub(crate) fn fail_all(&mut self, new_producer_id: u64) -> Vec<Batch> {
        assert!(self.inflight.is_empty(), "requeue before failing");
        assert!(new_producer_id != 0);
        self.producer_id = new_producer_id;
        self.next_sequence = 0;
        self.ready.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(value_bytes: usize) -> pb::Record {
        pb::Record {
            key: None,
            value: Bytes::from(vec![7u8; value_bytes]),
            timestamp_ms: 0,
            headers: Vec::new(),
        }
    }

    fn queue(records_max: usize, bytes_max: usize, linger_ms: u64) -> PartitionQueue {
        let limits = BatchLimits {
            records_max,
            bytes_max,
            linger: Duration::from_millis(linger_ms),
        };
        PartitionQueue::new(Rc::from("t"), 3, 42, limits, 0)
    }

    fn sequences(queue: &PartitionQueue) -> Vec<(u64, usize)> {
        queue
            .ready
            .iter()
            .map(|batch| (batch.sequence(), batch.record_count()))
            .collect()
    }

    #[test]
    fn fnv1a_matches_the_server_hash() {
        assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn count_trigger_seals_at_records_max() {
        let mut queue = queue(3, 1 << 20, 1_000);
        let now = Instant::now();
        for _ in 0..7 {
            queue.append(record(10), || now);
        }
        assert_eq!(sequences(&queue), [(0, 3), (3, 3)]);
        assert!(queue.linger_deadline().is_some(), "the 7th record is open");
        let request = &queue.ready[1].request;
        assert_eq!((request.producer_id, request.partition), (42, Some(3)));
    }

    #[test]
    fn bytes_trigger_seals_before_overflow_and_when_full() {
        let record_bytes = 100 + RECORD_OVERHEAD_BYTES;
        let mut queue = queue(1_000, record_bytes * 2 + record_bytes / 2, 1_000);
        let now = Instant::now();
        for _ in 0..5 {
            queue.append(record(100), || now);
        }
        // 2.5 records fit: every batch closes at 2 when the 3rd would overflow.
        assert_eq!(sequences(&queue), [(0, 2), (2, 2)]);
        let mut exact = self::queue(1_000, record_bytes * 2, 1_000);
        exact.append(record(100), || now);
        let (_, sealed) = exact.append(record(100), || now);
        assert!(sealed);
        assert_eq!(sequences(&exact), [(0, 2)], "sealed as soon as full");
    }

    #[test]
    fn time_trigger_seals_after_linger() {
        let mut queue = queue(1_000, 1 << 20, 100);
        let start = Instant::now();
        queue.append(record(10), || start);
        queue.append(record(10), || start + Duration::from_millis(50));
        assert_eq!(
            queue.linger_deadline(),
            Some(start + Duration::from_millis(100)),
            "linger counts from the first record"
        );
        assert!(!queue.seal_if_lingered(start + Duration::from_millis(99)));
        assert!(queue.ready.is_empty());
        assert!(queue.seal_if_lingered(start + Duration::from_millis(100)));
        assert_eq!(sequences(&queue), [(0, 2)]);
        assert_eq!(queue.linger_deadline(), None);
    }

    #[test]
    fn requeue_keeps_order_and_reject_renumbers_later_batches() {
        let mut queue = queue(2, 1 << 20, 1_000);
        let now = Instant::now();
        for _ in 0..6 {
            queue.append(record(1), || now);
        }
        for _ in 0..2 {
            let mut batch = queue.ready.pop_front().expect("ready");
            batch.sent = true;
            queue.inflight.push_back(batch);
        }
        queue.requeue();
        assert_eq!(sequences(&queue), [(0, 2), (2, 2), (4, 2)]);
        assert!(queue.ready.iter().take(2).all(|batch| batch.sent));
        let rejected = queue.reject_front(99).expect("front");
        assert_eq!(rejected.sequence(), 0);
        assert_eq!(sequences(&queue), [(0, 2), (2, 2)]);
        assert!(
            queue
                .ready
                .iter()
                .all(|batch| batch.request.producer_id == 99 && !batch.sent),
            "the rest restart under a new id, as never sent"
        );
        queue.append(record(1), || now);
        queue.seal();
        assert_eq!(sequences(&queue), [(0, 2), (2, 2), (4, 1)]);
    }

    #[test]
    fn restart_renumbers_every_sealed_batch_from_zero_under_a_new_id() {
        let mut queue = queue(2, 1 << 20, 1_000);
        let now = Instant::now();
        for _ in 0..5 {
            queue.append(record(1), || now);
        }
        queue.ready[0].sent = true;
        queue.restart(7);
        assert_eq!(sequences(&queue), [(0, 2), (2, 2)]);
        assert!(
            queue
                .ready
                .iter()
                .all(|b| b.request.producer_id == 7 && !b.sent)
        );
        queue.seal();
        assert_eq!(queue.front_sequence(), Some(0));
        assert_eq!(
            sequences(&queue),
            [(0, 2), (2, 2), (4, 1)],
            "the open batch follows"
        );
    }

    #[test]
    fn headers_count_toward_record_bytes() {
        let mut with_headers = record(10);
        with_headers.headers = vec![pb::Header {
            key: "k".repeat(100),
            value: Bytes::from(vec![0u8; 1_000]),
        }];
        assert_eq!(
            PartitionQueue::record_bytes(&with_headers),
            PartitionQueue::record_bytes(&record(10)) + 1_100 + HEADER_OVERHEAD_BYTES
        );
    }

    #[test]
    fn abandon_fails_sent_batches_and_restarts_unsent_under_a_new_id() {
        let mut queue = queue(1, 1 << 20, 1_000);
        let now = Instant::now();
        for _ in 0..3 {
            queue.append(record(1), || now);
        }
        queue.ready[0].sent = true;
        let abandoned = queue.abandon_sent(99);
        assert_eq!(abandoned.len(), 1);
        assert_eq!(sequences(&queue), [(0, 1), (1, 1)]);
        assert!(
            queue
                .ready
                .iter()
                .all(|batch| batch.request.producer_id == 99)
        );
    }

    #[test]
    fn outcome_resolves_every_record_with_its_offset() {
        let mut queue = queue(3, 1 << 20, 1_000);
        let now = Instant::now();
        let futures: Vec<DeliveryFuture> =
            (0..3).map(|_| queue.append(record(1), || now).0).collect();
        queue.ready[0].outcome.resolve(Ok(10));
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let offsets: Vec<u64> = futures
            .into_iter()
            .map(|mut future| match Pin::new(&mut future).poll(&mut cx) {
                Poll::Ready(Ok(ack)) => {
                    assert_eq!(ack.partition, 3);
                    ack.offset
                }
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(offsets, [10, 11, 12]);
    }
}
