//! One partition's log: appends, group commit, segment rolls, checkpoints and retention.
//!
//! Lives on its shard's executor (`!Send`). An append validates and encodes its batch into the
//! tail buffer synchronously (so offset order is append-call order), then asks the flusher for
//! a sync. The flusher is one detached task per partition at a time: it runs sync rounds
//! (write every buffered chunk, one fdatasync, publish the new durable point) while anyone is
//! waiting, then exits. Appends that arrive during a round are covered by the next one: group
//! commit without timers. State changes that await I/O (rounds, rolls, checkpoints) happen only
//! in the flusher, which callers cannot cancel; callers only wait on notifications.

mod open;
mod read;
mod round_stats;
mod spare;
mod tail;
mod zero_fill;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};

use crate::checkpoint::{CHECKPOINT_FILE, CHECKPOINT_TMP_FILE, Checkpoint};
use crate::error::{EngineError, Result};
use crate::format::{
    BATCH_BYTES_MAX, BATCH_RECORDS_MAX, RECORD_HEADERS_MAX, batch_encoded_bytes, encode_batch_into,
    record_over_headers_max,
};
use crate::notify::Notify;
use crate::producer::{ProducerBatch, ProducerTable, SequenceCheck};
use crate::segment::{
    IndexEntry, Segment, align_up, index_file_name, segment_file_name, write_whole_file,
};
use crate::storage::{IO_REQUEST_BYTES_MAX, IoBuffer, OpenMode, Storage, StorageFile};
use crate::types::{
    AckLevel, AppendBatch, Appended, Offsets, PartitionConfig, PartitionId, PartitionStats,
};

use round_stats::RoundTimes;
pub(crate) use round_stats::SyncRoundRecorder;
pub use round_stats::{LatencyHistogram, SYNC_ROUND_BUCKETS_US, SyncRoundStats};
pub(crate) use spare::SPARE_FILE_NAME;
use spare::{NextSegment, Spare};
use tail::{Round, Tail};
pub(crate) use zero_fill::ZeroFillBudget;
use zero_fill::ZeroFillPermit;
pub use zero_fill::{ZERO_FILLS_PER_SHARD_MAX, ZeroFillStats};

/// Unsynced bytes a partition buffers before appends wait for a sync (backpressure).
pub(crate) const UNSYNCED_BYTES_MAX: u64 = 8 * 1024 * 1024;
/// Size of one background zero-fill step of the active segment.
const PREZERO_WRITE_BYTES: usize = 1024 * 1024;
/// A new segment starts with this much zero-filled (synchronously, before first use), and a
/// background fill restarts this far ahead of a writer that outran the zero-filled part.
pub(crate) const PREZERO_GAP_BYTES: u64 = 256 * 1024;
/// The background zero-fill runs once the writer is closer than this to the zero-filled end:
/// a partition must have written this much into its zero-filled space before it asks for more,
/// so cold partitions (most of a thousand) never zero-fill, and zero-fill traffic stays
/// proportional to each partition's own writes.
const PREZERO_LOW_WATER_BYTES: u64 = PREZERO_GAP_BYTES / 2;
/// Rounds at least this large skip zero-filling: the fixed cost of allocating blocks at
/// sync time (~80 us on the reference disk) is small next to their transfer time, and
/// zero-filling would double their disk traffic.
const PREZERO_ROUND_BYTES_MAX: u64 = 256 * 1024;

const _: () = assert!(BATCH_BYTES_MAX as u64 <= UNSYNCED_BYTES_MAX);
const _: () = assert!(PREZERO_WRITE_BYTES <= IO_REQUEST_BYTES_MAX);
const _: () = assert!(PREZERO_LOW_WATER_BYTES > 0 && PREZERO_LOW_WATER_BYTES < PREZERO_GAP_BYTES);

/// Why the partition refuses service.
#[derive(Debug, Clone)]
struct Fault {
    reason: String,
    /// Reads are refused too (detected corruption); otherwise durable data stays readable.
    reads_refused: bool,
}

/// The flusher's last job failed for lack of space: the operation and its file. Unlike a
/// [`Fault`] this passes: a failed write (never a failed fdatasync) loses nothing, so the
/// job is tried again, with the same buffers, when the next append or sync asks.
#[derive(Debug, Clone)]
struct OutOfSpace {
    op: &'static str,
    path: PathBuf,
}

impl OutOfSpace {
    fn error(&self) -> EngineError {
        EngineError::NoSpace {
            op: self.op,
            path: self.path.clone(),
        }
    }
}

struct State<F: StorageFile> {
    segments: VecDeque<Segment<F>>,
    tail: Tail<F::Buffer>,
    log_end: u64,
    durable_offset: u64,
    /// Durable byte position in the active segment.
    durable_pos: u64,
    /// Highest offset someone asked to make durable.
    sync_wanted: u64,
    flusher_running: bool,
    roll_wanted: bool,
    fault: Option<Fault>,
    /// Set while the flusher's last job failed for lack of space (cleared when one succeeds).
    out_of_space: Option<OutOfSpace>,
    /// Flusher jobs failed for lack of space so far: an append or sync fails with NoSpace only
    /// for a failure that happened while it waited, so each new one asks for another attempt.
    out_of_space_failures: u64,
    /// A round whose writes failed for lack of space; the next round attempt writes it again.
    unwritten_round: Option<WantedRound<F::Buffer>>,
    closed: bool,
    producers: ProducerTable,
    /// The active segment's blocks are written (zero-filled, or a recycled file's earlier
    /// life) up to here: writes below it allocate nothing.
    allocated_to: u64,
    /// Start of the zero-fill in flight, if any.
    zeroing: Option<u64>,
    /// The zero-fill in flight has issued its fdatasync (see `confirm_no_failed_sync`).
    zero_fill_syncing: bool,
    /// Zero-fills ended so far (done or failed): tells a waiter that the fill it saw ended.
    zero_fills_ended: u64,
    /// Bytes made durable by the last sync round.
    last_round_bytes: u64,
    /// A checkpoint is being written (they are serialized: one temp file name).
    checkpoint_running: bool,
    /// Retention is retiring segments (runs are serialized: see `enforce_retention`).
    retiring: bool,
    /// The last published round's buffers (active segment): tail reads come from here.
    recent_writes: Vec<(u64, Rc<F::Buffer>)>,
    /// Where the last read of the active segment stopped: (segment base, offset, position),
    /// so a tailing reader resumes there instead of at the previous index entry.
    read_hint: Option<(u64, u64, u64)>,
    /// Tasks to spawn once the state borrow is released (see `Partition::kick`).
    spawn_flusher: bool,
    spawn_zero_fill: Option<ZeroFill<F>>,
    durable_bytes_since_checkpoint: u64,
    /// When the first append not yet taken by a sync round was encoded.
    unrounded_since: Option<Instant>,
    /// A retired segment file kept as the next segment (see `spare.rs`).
    spare: Option<Spare<F>>,
    stats: PartitionStats,
}

impl<F: StorageFile> State<F> {
    fn active(&self) -> &Segment<F> {
        self.segments
            .back()
            .expect("a partition always has an active segment")
    }

    fn active_mut(&mut self) -> &mut Segment<F> {
        self.segments
            .back_mut()
            .expect("a partition always has an active segment")
    }

    fn unsynced_bytes(&self) -> u64 {
        self.tail.written_pos() - self.durable_pos
    }
}

/// A background zero-fill to spawn: the active segment's file, `len` bytes at `start`, and
/// its share of the shard's budget (held until the fill ends).
struct ZeroFill<F> {
    file: Rc<F>,
    path: PathBuf,
    start: u64,
    len: u64,
    permit: ZeroFillPermit,
}

/// What an append attempt did.
enum Attempt {
    Done(Appended),
    Wait,
}

/// A partition's log. Obtain one from [`crate::Shard::open_partition`].
pub struct Partition<S: Storage> {
    id: PartitionId,
    dir: PathBuf,
    config: PartitionConfig,
    storage: Rc<S>,
    /// The shard's bound on background zero-fills (shared by its partitions).
    zero_fill: Rc<ZeroFillBudget>,
    /// The shard's sync-round histograms (shared by its partitions).
    rounds: Rc<SyncRoundRecorder>,
    me: Weak<Partition<S>>,
    state: RefCell<State<S::File>>,
    /// Signalled when the durable point moves, a roll ends, or the partition faults or closes.
    changed: Notify,
    /// Appends waiting for room (a roll, the unsynced-bytes bound), in arrival order: a later
    /// append never overtakes a waiting one, so offsets always follow call order.
    append_queue: RefCell<VecDeque<u64>>,
    next_append_ticket: Cell<u64>,
}

/// A place in [`Partition::append_queue`]; leaving the queue (done, failed or cancelled)
/// lets the next waiter try.
struct AppendTicket<'a, S: Storage> {
    partition: &'a Partition<S>,
    ticket: u64,
}

impl<S: Storage> Drop for AppendTicket<'_, S> {
    fn drop(&mut self) {
        self.partition
            .append_queue
            .borrow_mut()
            .retain(|&queued| queued != self.ticket);
        self.partition.changed.notify_all();
    }
}

impl<S: Storage> Partition<S> {
    /// The partition's id.
    pub fn id(&self) -> &PartitionId {
        &self.id
    }

    /// The partition's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Log start, log end and durable offsets.
    pub fn offsets(&self) -> Offsets {
        let st = self.state.borrow();
        let log_start = st.segments.front().map_or(st.log_end, |s| s.base_offset);
        Offsets {
            log_start,
            log_end: st.log_end,
            durable: st.durable_offset,
        }
    }

    /// Bytes of log on disk (sum of the segments' data).
    pub fn size_bytes(&self) -> u64 {
        self.state
            .borrow()
            .segments
            .iter()
            .map(|s| s.data_bytes)
            .sum()
    }

    /// Why the partition refuses service, if it does.
    pub fn fault(&self) -> Option<String> {
        self.state.borrow().fault.as_ref().map(|f| f.reason.clone())
    }

    /// Counters.
    pub fn stats(&self) -> PartitionStats {
        self.state.borrow().stats
    }

    fn faulted(&self, f: &Fault) -> EngineError {
        EngineError::PartitionFaulted {
            partition: self.id.clone(),
            reason: f.reason.clone(),
        }
    }

    /// Stops all further writes (and reads when `reads_refused`); fails every waiting ack.
    fn set_fault(&self, reason: String, reads_refused: bool) {
        {
            let mut st = self.state.borrow_mut();
            if st.fault.is_none() {
                tracing::error!(partition = %self.id, %reason, "partition faulted");
                st.fault = Some(Fault {
                    reason,
                    reads_refused,
                });
            }
        }
        self.changed.notify_all();
    }

    /// Appends a batch; resolves per `ack` (see [`AckLevel`]). A retry of an idempotent batch
    /// already appended returns its original offsets with `duplicate: true`.
    ///
    /// Cost: one encode into the write buffer; for `Durable`, one share of a group fdatasync.
    pub async fn append(&self, batch: AppendBatch, ack: AckLevel) -> Result<Appended> {
        let batch_bytes = self.validate(&batch)?;
        let space_failures_seen = self.state.borrow().out_of_space_failures;
        let mut ticket: Option<AppendTicket<'_, S>> = None;
        loop {
            let wait = self.changed.wait();
            if self.my_turn(&mut ticket) {
                let attempt = self.try_append(&batch, batch_bytes, space_failures_seen);
                self.kick();
                match attempt {
                    Ok(Attempt::Done(appended)) => {
                        drop(ticket);
                        if ack == AckLevel::Durable {
                            let end = appended.base_offset + u64::from(appended.record_count);
                            self.wait_durable(end, space_failures_seen)
                                .await
                                .map_err(|error| {
                                    self.not_durable(error, appended.base_offset, end)
                                })?;
                        }
                        return Ok(appended);
                    }
                    Ok(Attempt::Wait) => self.enqueue(&mut ticket),
                    Err(error) => return Err(error),
                }
            }
            wait.await;
        }
    }

    /// A full disk while an appended batch waited to be durable: say that it was appended
    /// (the client must not take it for refused, nothing written).
    fn not_durable(&self, error: EngineError, base_offset: u64, end_offset: u64) -> EngineError {
        match error {
            EngineError::NoSpace { op, path } => EngineError::AppendedNotDurable {
                partition: self.id.clone(),
                base_offset,
                end_offset,
                op,
                path,
            },
            other => other,
        }
    }

    /// True when this append may try now: nobody waits ahead of it. An append arriving
    /// while others wait joins the back of the queue.
    fn my_turn<'a>(&'a self, ticket: &mut Option<AppendTicket<'a, S>>) -> bool {
        match ticket {
            Some(held) => self.append_queue.borrow().front() == Some(&held.ticket),
            None if self.append_queue.borrow().is_empty() => true,
            None => {
                self.enqueue(ticket);
                false
            }
        }
    }

    fn enqueue<'a>(&'a self, ticket: &mut Option<AppendTicket<'a, S>>) {
        if ticket.is_some() {
            return;
        }
        let id = self.next_append_ticket.get();
        self.next_append_ticket.set(id + 1);
        self.append_queue.borrow_mut().push_back(id);
        *ticket = Some(AppendTicket {
            partition: self,
            ticket: id,
        });
    }

    fn validate(&self, batch: &AppendBatch) -> Result<usize> {
        if batch.records.is_empty() {
            return Err(EngineError::EmptyBatch {
                partition: self.id.clone(),
            });
        }
        let batch_bytes = batch_encoded_bytes(&batch.records);
        if batch_bytes > BATCH_BYTES_MAX || batch.records.len() > BATCH_RECORDS_MAX {
            return Err(EngineError::BatchTooLarge {
                partition: self.id.clone(),
                batch_bytes,
                record_count: batch.records.len(),
                batch_bytes_max: BATCH_BYTES_MAX,
            });
        }
        // Every limit the decoder enforces is checked here, so an acknowledged batch always
        // reads back (and recovery never takes it for a torn tail).
        if let Some((record_index, header_count)) = record_over_headers_max(&batch.records) {
            return Err(EngineError::TooManyHeaders {
                partition: self.id.clone(),
                record_index,
                header_count,
                headers_max: RECORD_HEADERS_MAX,
            });
        }
        Ok(batch_bytes)
    }

    /// Everything up to the encode, with no await: offsets follow call order.
    fn try_append(
        &self,
        batch: &AppendBatch,
        batch_bytes: usize,
        space_failures_seen: u64,
    ) -> Result<Attempt> {
        let mut st = self.state.borrow_mut();
        if st.closed {
            return Err(EngineError::Closed {
                partition: self.id.clone(),
            });
        }
        if let Some(f) = &st.fault {
            return Err(self.faulted(f));
        }
        if st.out_of_space.is_some() {
            return self.retry_for_space(&mut st, space_failures_seen);
        }
        let record_count = batch.records.len() as u32;
        if let Some(p) = batch.producer {
            match st.producers.check(p.producer_id, p.sequence, record_count) {
                SequenceCheck::Fresh => {}
                SequenceCheck::Duplicate(b) => {
                    st.stats.duplicate_batches += 1;
                    let appended = Appended {
                        base_offset: b.base_offset,
                        record_count,
                        duplicate: true,
                    };
                    self.request_sync(&mut st, b.base_offset + u64::from(record_count));
                    return Ok(Attempt::Done(appended));
                }
                SequenceCheck::Gap { expected } => {
                    let (partition, producer_id, got) =
                        (self.id.clone(), p.producer_id, p.sequence);
                    return Err(EngineError::SequenceGap {
                        partition,
                        producer_id,
                        expected,
                        got,
                    });
                }
                SequenceCheck::Stale { expected } => {
                    let (partition, producer_id, got) =
                        (self.id.clone(), p.producer_id, p.sequence);
                    return Err(EngineError::StaleSequence {
                        partition,
                        producer_id,
                        expected,
                        got,
                    });
                }
            }
        }
        if st.roll_wanted {
            self.ensure_flusher(&mut st);
            return Ok(Attempt::Wait);
        }
        if self.roll_due(&st, batch_bytes) {
            st.roll_wanted = true;
            self.ensure_flusher(&mut st);
            return Ok(Attempt::Wait);
        }
        let unsynced = st.unsynced_bytes();
        if unsynced > 0 && unsynced + batch_bytes as u64 > UNSYNCED_BYTES_MAX {
            let end = st.log_end;
            self.request_sync(&mut st, end);
            return Ok(Attempt::Wait);
        }
        let appended = self.encode(&mut st, batch, batch_bytes);
        self.maybe_prezero(&mut st);
        let end = appended.base_offset + u64::from(record_count);
        self.request_sync(&mut st, end);
        Ok(Attempt::Done(appended))
    }

    /// An append arriving while the flusher's last job failed for lack of space encodes
    /// nothing: it asks for one more attempt and waits for it, and fails with NoSpace once an
    /// attempt fails after it arrived. So each append costs at most one attempt, and appends
    /// resume by themselves once space is freed.
    fn retry_for_space(&self, st: &mut State<S::File>, failures_seen: u64) -> Result<Attempt> {
        if st.out_of_space_failures > failures_seen
            && let Some(full) = &st.out_of_space
        {
            return Err(full.error());
        }
        self.ensure_flusher(st);
        Ok(Attempt::Wait)
    }

    fn roll_due(&self, st: &State<S::File>, batch_bytes: usize) -> bool {
        let active = st.active();
        if active.data_bytes == 0 {
            return false;
        }
        let full = active.data_bytes + batch_bytes as u64 > self.config.segment_bytes_max;
        let age_ms = self.storage.now_ms().saturating_sub(active.created_ms);
        full || age_ms >= i64::try_from(self.config.segment_age_ms_max).unwrap_or(i64::MAX)
    }

    fn encode(&self, st: &mut State<S::File>, batch: &AppendBatch, batch_bytes: usize) -> Appended {
        let base_offset = st.log_end;
        let (file, salt) = (st.active().file.clone(), st.active().salt);
        let (out, pos) = st.tail.reserve(&*file, batch_bytes);
        let written = encode_batch_into(out, salt, base_offset, batch.producer, &batch.records);
        assert_eq!(written, batch_bytes);
        st.tail.commit(written);
        let record_count = batch.records.len() as u32;
        let max_ts = batch
            .records
            .iter()
            .map(|r| r.timestamp_ms)
            .max()
            .unwrap_or(i64::MIN);
        let interval = self.config.index_interval_bytes;
        let active = st.active_mut();
        assert_eq!(
            active.data_bytes, pos,
            "tail and segment disagree on the write position"
        );
        active.data_bytes += written as u64;
        active.next_offset += u64::from(record_count);
        active.max_timestamp_ms = active.max_timestamp_ms.max(max_ts);
        let entry = IndexEntry {
            offset: base_offset,
            pos,
            max_timestamp_ms: active.max_timestamp_ms,
        };
        active.index.maybe_add(entry, interval);
        st.log_end += u64::from(record_count);
        st.unrounded_since.get_or_insert_with(Instant::now);
        // Recovery's torn-tail zone relies on this bound (see partition/open.rs).
        assert!(
            st.unsynced_bytes() <= UNSYNCED_BYTES_MAX,
            "unsynced bytes over the bound"
        );
        if let Some(p) = batch.producer {
            let b = ProducerBatch {
                sequence: p.sequence,
                record_count,
                base_offset,
            };
            st.producers.record(p.producer_id, b);
        }
        st.stats.appended_records += u64::from(record_count);
        st.stats.appended_bytes += written as u64;
        Appended {
            base_offset,
            record_count,
            duplicate: false,
        }
    }

    fn request_sync(&self, st: &mut State<S::File>, offset: u64) {
        st.sync_wanted = st.sync_wanted.max(offset);
        if offset > st.durable_offset {
            self.ensure_flusher(st);
        }
    }

    fn ensure_flusher(&self, st: &mut State<S::File>) {
        if st.flusher_running || st.fault.is_some() {
            return;
        }
        st.flusher_running = true;
        st.spawn_flusher = true;
    }

    /// Spawns the tasks requested while the state was borrowed (a spawned task may run before
    /// `spawn` returns, so spawning under a borrow is never done).
    fn kick(&self) {
        let (flusher, zero_fill) = {
            let mut st = self.state.borrow_mut();
            (
                std::mem::take(&mut st.spawn_flusher),
                st.spawn_zero_fill.take(),
            )
        };
        let Some(me) = self.me.upgrade() else { return };
        if let Some(fill) = zero_fill {
            let me = me.clone();
            self.storage
                .spawn_background(async move { me.run_zero_fill(fill).await });
        }
        if flusher {
            glommio::spawn_local(async move { me.flusher().await }).detach();
        }
    }

    /// Waits until `offset` is durable; fails if the partition faults or closes first, or if
    /// a flusher job fails for lack of space after `space_failures_seen` failures.
    async fn wait_durable(&self, offset: u64, space_failures_seen: u64) -> Result<()> {
        loop {
            let wait = self.changed.wait();
            {
                let st = self.state.borrow();
                if st.durable_offset >= offset {
                    return Ok(());
                }
                if let Some(f) = &st.fault {
                    return Err(self.faulted(f));
                }
                if st.out_of_space_failures > space_failures_seen
                    && let Some(full) = &st.out_of_space
                {
                    return Err(full.error());
                }
                if st.closed && !st.flusher_running {
                    return Err(EngineError::Closed {
                        partition: self.id.clone(),
                    });
                }
            }
            wait.await;
        }
    }

    /// Resolves `Ok` once the durable offset is past `offset`. Fails when the partition faults
    /// or closes first, since no record will become durable after that: with
    /// [`EngineError::PartitionFaulted`] (naming the fault; durable records stay readable
    /// unless the fault was corruption) or [`EngineError::Closed`]. A tailing reader must stop
    /// on the error: retrying at once would spin.
    pub async fn wait_for_durable_beyond(&self, offset: u64) -> Result<()> {
        loop {
            let wait = self.changed.wait();
            {
                let st = self.state.borrow();
                if st.durable_offset > offset {
                    return Ok(());
                }
                if let Some(f) = &st.fault {
                    return Err(EngineError::PartitionFaulted {
                        partition: self.id.clone(),
                        reason: f.reason.clone(),
                    });
                }
                if st.closed {
                    return Err(EngineError::Closed {
                        partition: self.id.clone(),
                    });
                }
            }
            wait.await;
        }
    }

    /// Makes everything appended so far durable; returns the durable offset.
    pub async fn sync(&self) -> Result<u64> {
        let (end, space_failures_seen) = {
            let mut st = self.state.borrow_mut();
            if let Some(f) = &st.fault {
                return Err(self.faulted(f));
            }
            let end = st.log_end;
            self.request_sync(&mut st, end);
            (end, st.out_of_space_failures)
        };
        self.kick();
        self.wait_durable(end, space_failures_seen).await?;
        Ok(self.state.borrow().durable_offset)
    }

    // ---- the flusher -------------------------------------------------------------------

    async fn flusher(self: Rc<Self>) {
        while let Some(job) = self.next_job() {
            let result = match job {
                Job::Sync => self.sync_rounds().await,
                Job::Roll => self.roll().await,
                Job::Checkpoint => {
                    self.checkpoint_in_background();
                    Ok(())
                }
            };
            match result {
                Ok(()) => self.space_is_back(),
                Err(EngineError::NoSpace { op, path }) => {
                    self.stop_out_of_space(OutOfSpace { op, path });
                    break;
                }
                Err(e) => self.set_fault(e.to_string(), false),
            }
        }
        self.changed.notify_all();
    }

    /// The flusher's next job; `None` (and the flusher is no longer running) when there is
    /// nothing to do, which also means nothing is stuck for lack of space.
    fn next_job(&self) -> Option<Job> {
        let mut st = self.state.borrow_mut();
        let checkpoint_due = st.durable_bytes_since_checkpoint
            >= self.config.checkpoint_interval_bytes
            && !st.checkpoint_running;
        let job = if st.fault.is_some() {
            None
        } else if st.roll_wanted {
            Some(Job::Roll)
        } else if st.sync_wanted > st.durable_offset {
            Some(Job::Sync)
        } else if checkpoint_due {
            Some(Job::Checkpoint)
        } else {
            None
        };
        if job.is_none() {
            st.flusher_running = false;
            st.out_of_space = None;
        }
        job
    }

    /// A flusher job succeeded: whatever waited for space may go on.
    fn space_is_back(&self) {
        let was_full = self.state.borrow_mut().out_of_space.take().is_some();
        if was_full {
            tracing::info!(partition = %self.id, "space is back: writes resume");
            self.changed.notify_all();
        }
    }

    /// Ends the flusher after a job failed for lack of space: the job stays wanted (a roll,
    /// or a round kept in `unwritten_round`) and is tried again when an append or sync asks.
    fn stop_out_of_space(&self, full: OutOfSpace) {
        tracing::warn!(partition = %self.id, op = full.op, path = ?full.path, "out of space: writes wait for room");
        let mut st = self.state.borrow_mut();
        st.out_of_space = Some(full);
        st.out_of_space_failures += 1;
        st.flusher_running = false;
    }

    /// Runs sync rounds while anyone wants more data durable, pipelined: round k+1's writes
    /// are issued while round k's fdatasync is in flight, so the device never idles during a
    /// sync. Round k is published only after its own fdatasync, which was issued after all
    /// of its writes completed. Round k+1 may rewrite round k's partial last page during that
    /// fdatasync; the rewrite carries the same bytes for round k's part.
    async fn sync_rounds(&self) -> Result<()> {
        let mut written: Option<Written<<S::File as StorageFile>::Buffer>> = None;
        loop {
            let next = self.take_wanted_round(written.as_ref());
            let (file, path) = {
                let st = self.state.borrow();
                (st.active().file.clone(), st.active().path.clone())
            };
            match (written.take(), next) {
                (None, None) => return Ok(()),
                (None, Some(round)) => {
                    written = Some(self.write_round(&*file, &path, round).await?)
                }
                (Some(w), None) => {
                    let issued = Instant::now();
                    fdatasync(&*file, &path).await?;
                    self.confirm_no_failed_sync().await?;
                    self.publish(w, issued.elapsed());
                    // Let the appenders just released append again before the next round.
                    crate::notify::yield_once().await;
                }
                (Some(w), Some(round)) => {
                    let timed_sync = async {
                        let issued = Instant::now();
                        let synced = fdatasync(&*file, &path).await;
                        (synced, issued.elapsed())
                    };
                    let ((synced, sync_time), next_written) = futures_lite::future::zip(
                        timed_sync,
                        self.write_round(&*file, &path, round),
                    )
                    .await;
                    synced?;
                    self.confirm_no_failed_sync().await?;
                    self.publish(w, sync_time);
                    written = Some(next_written?);
                }
            }
        }
    }

    /// The next round, if there is new data and someone wants more than is already written.
    fn take_wanted_round(
        &self,
        written: Option<&Written<<S::File as StorageFile>::Buffer>>,
    ) -> Option<WantedRound<<S::File as StorageFile>::Buffer>> {
        let mut st = self.state.borrow_mut();
        if let Some(unwritten) = st.unwritten_round.take() {
            assert!(
                written.is_none(),
                "a round failed while another was in flight"
            );
            return Some(unwritten);
        }
        let (covered_pos, covered_offset) = written
            .map_or((st.durable_pos, st.durable_offset), |w| {
                (w.end_pos, w.end_offset)
            });
        if st.sync_wanted <= covered_offset {
            return None;
        }
        let file = st.active().file.clone();
        let end_offset = st.log_end;
        let round = st.tail.take_round(&*file, covered_pos);
        if round.is_none() && written.is_none() {
            // Nothing new in the tail: everything appended is already durable.
            st.durable_offset = end_offset;
        }
        let round = round?;
        let first_append = st.unrounded_since.take().unwrap_or_else(Instant::now);
        Some(WantedRound {
            round,
            end_offset,
            first_append,
        })
    }

    async fn write_round(
        &self,
        file: &S::File,
        path: &Path,
        wanted: WantedRound<<S::File as StorageFile>::Buffer>,
    ) -> Result<Written<<S::File as StorageFile>::Buffer>> {
        let WantedRound {
            round,
            end_offset,
            first_append,
        } = wanted;
        self.wait_zeroing_clear(round.end_pos).await;
        let started = Instant::now();
        let Round { writes, end_pos } = round;
        let kept = writes.clone();
        if let Err(e) = write_all(file, writes).await {
            let e = EngineError::io("write", path, e);
            if matches!(e, EngineError::NoSpace { .. }) {
                // A failed write loses nothing: the next attempt writes the same buffers.
                self.state.borrow_mut().unwritten_round = Some(WantedRound {
                    round: Round {
                        writes: kept,
                        end_pos,
                    },
                    end_offset,
                    first_append,
                });
            }
            return Err(e);
        }
        self.space_is_back();
        Ok(Written {
            end_pos,
            end_offset,
            started,
            waited: started.saturating_duration_since(first_append),
            write_time: started.elapsed(),
            writes: kept,
        })
    }

    /// Called after a round's fdatasync succeeded, before publishing it. That success proves
    /// the round durable only if no other fdatasync of the file (a zero-fill's) failed: after
    /// a failure the kernel may have dropped the dirty state of writes issued before it, and
    /// of two concurrent fdatasyncs of one file only one may report the error. So this waits
    /// for a zero-fill fdatasync in flight to end, then refuses if the partition faulted. (A
    /// fill fdatasync issued after this round's returned cannot take its success back.)
    async fn confirm_no_failed_sync(&self) -> Result<()> {
        let fill_syncing = {
            let st = self.state.borrow();
            st.zero_fill_syncing.then_some(st.zero_fills_ended)
        };
        if let Some(ended_before) = fill_syncing {
            self.wait_until(|st| st.zero_fills_ended > ended_before)
                .await;
        }
        match &self.state.borrow().fault {
            Some(f) => Err(self.faulted(f)),
            None => Ok(()),
        }
    }

    /// Waits until `done` holds for the state (re-checked whenever the partition notifies).
    async fn wait_until(&self, done: impl Fn(&State<S::File>) -> bool) {
        loop {
            let wait = self.changed.wait();
            if done(&self.state.borrow()) {
                return;
            }
            wait.await;
        }
    }

    /// Publishes a written and fdatasynced round: moves the durable point, wakes waiters.
    fn publish(&self, w: Written<<S::File as StorageFile>::Buffer>, fdatasync_time: Duration) {
        let latency_us = u64::try_from(w.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.rounds.record(RoundTimes {
            wait: w.waited,
            write: w.write_time,
            fdatasync: fdatasync_time,
        });
        {
            let mut st = self.state.borrow_mut();
            assert!(w.end_pos >= st.durable_pos && w.end_offset >= st.durable_offset);
            st.durable_bytes_since_checkpoint += w.end_pos - st.durable_pos;
            st.last_round_bytes = w.end_pos - st.durable_pos;
            st.durable_pos = w.end_pos;
            st.durable_offset = w.end_offset;
            st.recent_writes = w.writes;
            st.stats.syncs += 1;
            st.stats.last_sync_latency_us = latency_us;
            st.stats.sync_latency_us_max = st.stats.sync_latency_us_max.max(latency_us);
        }
        self.changed.notify_all();
    }

    /// Seals the active segment and starts the next one. Appends wait while `roll_wanted`.
    async fn roll(&self) -> Result<()> {
        {
            let mut st = self.state.borrow_mut();
            st.sync_wanted = st.log_end;
        }
        loop {
            let pending = {
                let st = self.state.borrow();
                st.durable_offset < st.log_end || !st.tail.sealed.is_empty()
            };
            if !pending {
                break;
            }
            self.sync_rounds().await?;
        }
        self.seal_active().await?;
        self.start_segment().await?;
        // Appends resume now; the new segment's first checkpoint follows in the background.
        // Recovery does not need it: without it, it replays the segment just sealed.
        self.checkpoint_in_background();
        {
            let mut st = self.state.borrow_mut();
            st.roll_wanted = false;
            st.stats.segment_rolls += 1;
        }
        self.changed.notify_all();
        self.spawn_retention();
        Ok(())
    }

    /// Applies retention right after a roll (when configured), off the flusher: a segment it
    /// retires can become the spare of the next roll, and disk use stays within one segment of
    /// the limit instead of growing until the shard's next periodic pass.
    fn spawn_retention(&self) {
        let configured =
            self.config.retention_bytes_max.is_some() || self.config.retention_age_ms_max.is_some();
        if !configured {
            return;
        }
        let Some(me) = self.me.upgrade() else { return };
        let now_ms = self.storage.now_ms();
        self.storage.spawn_background(async move {
            if let Err(e) = me.enforce_retention(now_ms).await {
                tracing::warn!(partition = %me.id, error = %e, "retention after a roll failed");
            }
        });
    }

    /// Cuts the pre-zeroed slack, fdatasyncs and writes the sealed segment's index file.
    async fn seal_active(&self) -> Result<()> {
        // A zero-fill landing after the truncation would make the file longer than its index
        // says. None starts meanwhile: fills start only from appends, which wait for the roll.
        self.wait_until(|st| st.zeroing.is_none()).await;
        if let Some(f) = &self.state.borrow().fault {
            return Err(self.faulted(f)); // the fill's fdatasync failed
        }
        let (file, path, image) = {
            let st = self.state.borrow();
            let a = st.active();
            (
                a.file.clone(),
                a.path.clone(),
                a.index_image(a.data_bytes, a.next_offset),
            )
        };
        file.truncate(image.data_bytes)
            .await
            .map_err(|e| EngineError::io("truncate", &path, e))?;
        fdatasync(&*file, &path).await?;
        let index_path = self.dir.join(index_file_name(image.base_offset));
        let index_file = self
            .open_file(&index_path, OpenMode::CreateTruncate)
            .await?;
        write_whole_file(&index_file, &image.encode())
            .await
            .map_err(|e| EngineError::io("write index", &index_path, e))?;
        let mut st = self.state.borrow_mut();
        assert!(st.zeroing.is_none(), "a zero-fill started while sealing");
        st.active_mut().sealed = true;
        Ok(())
    }

    /// Starts the next segment (the spare, when one is ready; else a new file) and points the
    /// tail at it.
    async fn start_segment(&self) -> Result<()> {
        let base_offset = self.state.borrow().log_end;
        let next = match self.take_ready_spare(base_offset).await? {
            Some(recycled) => recycled,
            None => self.create_segment_file(base_offset).await?,
        };
        let NextSegment {
            path,
            file,
            salt,
            allocated_to,
        } = next;
        self.sync_dir().await?;
        let now_ms = self.storage.now_ms();
        let mut st = self.state.borrow_mut();
        st.tail = Tail::new(&*file, 0, &[]);
        st.durable_pos = 0;
        st.allocated_to = allocated_to;
        st.recent_writes.clear();
        st.read_hint = None;
        st.segments
            .push_back(new_segment(base_offset, salt, path, file, now_ms));
        Ok(())
    }

    /// Creates an unsalted segment file, its start zero-filled (the caller syncs the directory).
    async fn create_segment_file(&self, base_offset: u64) -> Result<NextSegment<S::File>> {
        let path = self.dir.join(segment_file_name(base_offset, 0));
        let file = Rc::new(self.open_file(&path, OpenMode::CreateTruncate).await?);
        let allocated_to = self.prezero_new_segment(&*file, &path).await?;
        Ok(NextSegment {
            path,
            file,
            salt: 0,
            allocated_to,
        })
    }

    /// Keeps the active segment zero-filled (written and synced) ahead of the write position,
    /// in the background, so syncs never pay for allocating blocks or converting unwritten
    /// extents. Only a partition whose writer came within [`PREZERO_LOW_WATER_BYTES`] of the
    /// zero-filled end asks, and only while the shard's [`ZeroFillBudget`] has a permit (else
    /// it asks again on its next append). Rounds that would overlap a fill in flight wait.
    fn maybe_prezero(&self, st: &mut State<S::File>) {
        // A fill during a full disk would only fail (and take blocks a round needs).
        let busy = st.zeroing.is_some() || st.roll_wanted || st.out_of_space.is_some();
        if !self.config.prezero_segments || busy || st.closed || st.fault.is_some() {
            return;
        }
        if st.last_round_bytes >= PREZERO_ROUND_BYTES_MAX {
            return;
        }
        let written = align_up(st.tail.written_pos());
        let limit = align_up(self.config.segment_bytes_max);
        if st.allocated_to >= written + PREZERO_LOW_WATER_BYTES {
            return; // enough zero-filled space ahead
        }
        // Contiguous with the zero-filled part while the writer is inside it; after a burst of
        // big rounds outran it, restart a gap ahead so imminent rounds need not wait.
        let start = if st.allocated_to >= written {
            st.allocated_to
        } else {
            written + PREZERO_GAP_BYTES
        };
        if start >= limit {
            return;
        }
        let Some(permit) = self.zero_fill.try_acquire() else {
            return;
        };
        let len = (limit - start).min(PREZERO_WRITE_BYTES as u64);
        st.zeroing = Some(start);
        st.spawn_zero_fill = Some(ZeroFill {
            file: st.active().file.clone(),
            path: st.active().path.clone(),
            start,
            len,
            permit,
        });
    }

    /// One background zero-fill step: write the zeros, fdatasync. A failed write is only a
    /// lost head start (the zeros are no one's data). A failed fdatasync faults the partition:
    /// it covers the rounds' writes to the same file too, whose dirty state the kernel may
    /// have dropped, so no later fdatasync could prove them durable.
    async fn run_zero_fill(&self, fill: ZeroFill<S::File>) {
        let ZeroFill {
            file,
            path,
            start,
            len,
            permit,
        } = fill;
        let synced = match write_zeros(&*file, start, len).await {
            Ok(()) => {
                self.state.borrow_mut().zero_fill_syncing = true;
                fdatasync(&*file, &path).await.map(|()| true)
            }
            Err(e) => {
                tracing::warn!(partition = %self.id, path = ?path, error = %e, "zero-fill write failed");
                Ok(false)
            }
        };
        drop(permit);
        if let Err(e) = &synced {
            // Before `zeroing` clears: a round waiting on this fill must see the fault.
            self.set_fault(e.to_string(), false);
        }
        {
            let mut st = self.state.borrow_mut();
            st.zeroing = None;
            st.zero_fill_syncing = false;
            st.zero_fills_ended += 1;
            if matches!(synced, Ok(true)) && Rc::ptr_eq(&st.active().file, &file) {
                st.allocated_to = start + len;
            }
        }
        self.changed.notify_all();
    }

    /// Zero-fills the start of a new segment (when enabled); returns how much.
    pub(crate) async fn prezero_new_segment(&self, file: &S::File, path: &Path) -> Result<u64> {
        prezero_new_segment(&self.config, file, path).await
    }

    /// Waits while a zero-fill in flight starts before `end_pos` (the round would overlap it).
    async fn wait_zeroing_clear(&self, end_pos: u64) {
        let end_pos = align_up(end_pos);
        self.wait_until(|st| st.zeroing.is_none_or(|start| start >= end_pos))
            .await;
    }

    /// Writes a checkpoint off the flusher (rounds go on meanwhile) unless one is being
    /// written.
    fn checkpoint_in_background(&self) {
        let Some(me) = self.me.upgrade() else { return };
        {
            let mut st = self.state.borrow_mut();
            if st.checkpoint_running {
                return;
            }
            st.checkpoint_running = true;
        }
        self.storage.spawn_background(async move {
            let written = me.checkpoint_body().await;
            me.state.borrow_mut().checkpoint_running = false;
            me.changed.notify_all();
            match written {
                Ok(()) => {}
                // Recovery is correct without it (it scans from the previous one); a later
                // checkpoint tries again.
                Err(EngineError::NoSpace { .. }) => {
                    tracing::warn!(partition = %me.id, "no space for a checkpoint");
                }
                Err(e) => me.set_fault(e.to_string(), false),
            }
        });
    }

    /// Waits until the state flag `flag` picks is clear, then sets it: one holder at a time
    /// (the holder clears it and notifies).
    async fn take_turn(&self, flag: fn(&mut State<S::File>) -> &mut bool) {
        loop {
            let wait = self.changed.wait();
            {
                let mut st = self.state.borrow_mut();
                let held = flag(&mut st);
                if !*held {
                    *held = true;
                    return;
                }
            }
            wait.await;
        }
    }

    /// Writes the checkpoint once no other checkpoint is being written.
    async fn write_checkpoint(&self) -> Result<()> {
        self.take_turn(|st| &mut st.checkpoint_running).await;
        let written = self.checkpoint_body().await;
        self.state.borrow_mut().checkpoint_running = false;
        self.changed.notify_all();
        written
    }

    /// Snapshots the durable state and writes it: temp file, fdatasync, rename, directory
    /// fsync. The snapshot is taken without awaiting, so it is one consistent durable point.
    async fn checkpoint_body(&self) -> Result<()> {
        let (cp, flushed) = {
            let st = self.state.borrow();
            let a = st.active();
            let cp = Checkpoint {
                segment_base: a.base_offset,
                durable_pos: st.durable_pos,
                durable_offset: st.durable_offset,
                segment_created_ms: a.created_ms,
                producers: st.producers.snapshot(st.durable_offset),
                active_index: a.index_image(st.durable_pos, st.durable_offset),
            };
            (cp, st.durable_bytes_since_checkpoint)
        };
        let tmp = self.dir.join(CHECKPOINT_TMP_FILE);
        let file = self.open_file(&tmp, OpenMode::CreateTruncate).await?;
        write_whole_file(&file, &cp.encode())
            .await
            .map_err(|e| EngineError::io("write checkpoint", &tmp, e))?;
        let dest = self.dir.join(CHECKPOINT_FILE);
        self.storage
            .rename(&tmp, &dest)
            .await
            .map_err(|e| EngineError::io("rename", &tmp, e))?;
        self.sync_dir().await?;
        let mut st = self.state.borrow_mut();
        st.durable_bytes_since_checkpoint =
            st.durable_bytes_since_checkpoint.saturating_sub(flushed);
        st.stats.checkpoints += 1;
        Ok(())
    }

    async fn open_file(&self, path: &Path, mode: OpenMode) -> Result<S::File> {
        self.storage
            .open(path, mode)
            .await
            .map_err(|e| EngineError::io("open", path, e))
    }

    /// A directory fsync. Like [`fdatasync`], its errors are never `NoSpace`: after a failed
    /// one the directory's state is unknown, so it is never retried.
    async fn sync_dir(&self) -> Result<()> {
        self.storage
            .sync_dir(&self.dir)
            .await
            .map_err(|source| EngineError::Io {
                op: "fsync dir",
                path: self.dir.clone(),
                source,
            })
    }

    // ---- retention, close, remove ------------------------------------------------------

    /// Deletes whole sealed segments beyond the size or age limits; returns how many.
    /// The active segment is never deleted; the log start moves to the first kept segment.
    /// One retired file may be kept as the spare segment instead (see `spare.rs`). Runs of it
    /// are serialized, so the directory always loses its oldest segments first.
    pub async fn enforce_retention(&self, now_ms: i64) -> Result<u64> {
        self.take_turn(|st| &mut st.retiring).await;
        let retired = self.retire_expired(now_ms).await;
        self.state.borrow_mut().retiring = false;
        self.changed.notify_all();
        retired
    }

    /// The segments leave the in-memory list (readers see the new log start) before their
    /// unlinks are durable, so a crash or a failed step here can bring them back after a
    /// restart: the log start then moves backwards. That is harmless: they hold exactly the
    /// bytes they held (a retired file is reused only after the directory sync below made its
    /// rename durable), the changes are made oldest first so no hole can appear, and
    /// retention retires them again on its next pass. Dropping them only after the sync would
    /// let a reader map a file between the check that it is unheld and its reuse as the spare.
    /// A step that fails leaves its files on disk until the next restart (space only).
    async fn retire_expired(&self, now_ms: i64) -> Result<u64> {
        let mut doomed = self.take_expired_segments(now_ms);
        let count = doomed.len() as u64;
        if count == 0 {
            return Ok(0);
        }
        let recycled = self.recyclable(&mut doomed);
        self.retire_files(&doomed, recycled).await?;
        if let Some(i) = recycled {
            self.open_spare(doomed[i].salt).await?;
        }
        Ok(count)
    }

    /// Retires `doomed` oldest first, each index before its segment: the one at `recycled` is
    /// renamed to the spare's name, the others are removed; then syncs the directory. A crash
    /// makes some prefix of these changes durable (a concurrent directory sync may come
    /// between any two), and in this order every prefix leaves a log without holes and no
    /// index without its segment.
    async fn retire_files(
        &self,
        doomed: &[Segment<S::File>],
        recycled: Option<usize>,
    ) -> Result<()> {
        for (i, segment) in doomed.iter().enumerate() {
            self.remove_index_of(segment.base_offset).await?;
            if recycled == Some(i) {
                self.keep_as_spare(segment).await?;
            } else {
                self.storage
                    .remove_file(&segment.path)
                    .await
                    .map_err(|e| EngineError::io("remove", &segment.path, e))?;
            }
        }
        self.sync_dir().await
    }

    async fn remove_index_of(&self, base_offset: u64) -> Result<()> {
        let index = self.dir.join(index_file_name(base_offset));
        match self.storage.remove_file(&index).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(EngineError::io("remove", &index, e))
            }
            _ => Ok(()),
        }
    }

    fn take_expired_segments(&self, now_ms: i64) -> Vec<Segment<S::File>> {
        let mut st = self.state.borrow_mut();
        let mut total: u64 = st.segments.iter().map(|s| s.data_bytes).sum();
        let mut doomed = Vec::new();
        while st.segments.len() > 1 {
            let oldest = &st.segments[0];
            let over_size = self
                .config
                .retention_bytes_max
                .is_some_and(|max| total > max);
            let age_max = self
                .config
                .retention_age_ms_max
                .map(|a| i64::try_from(a).unwrap_or(i64::MAX));
            let too_old =
                age_max.is_some_and(|max| now_ms.saturating_sub(oldest.max_timestamp_ms) > max);
            if !(over_size || too_old) {
                break;
            }
            let Some(segment) = st.segments.pop_front() else {
                break;
            };
            assert!(segment.sealed, "retention reached the active segment");
            total -= segment.data_bytes;
            doomed.push(segment);
        }
        st.stats.segments_deleted += doomed.len() as u64;
        doomed
    }

    /// Syncs everything, writes a checkpoint and refuses further appends.
    pub(crate) async fn close(&self) -> Result<()> {
        let healthy = self.state.borrow().fault.is_none();
        let synced = if healthy {
            self.sync().await.map(|_| ())
        } else {
            Ok(())
        };
        self.state.borrow_mut().closed = true;
        self.changed.notify_all();
        self.wait_idle().await;
        synced?;
        if healthy {
            self.write_checkpoint().await?;
        }
        Ok(())
    }

    /// Waits until no flusher, zero-fill, retention run or checkpoint is running.
    pub(crate) async fn wait_idle(&self) {
        loop {
            let wait = self.changed.wait();
            {
                let st = self.state.borrow();
                if !st.flusher_running
                    && st.zeroing.is_none()
                    && !st.checkpoint_running
                    && !st.retiring
                {
                    return;
                }
            }
            wait.await;
        }
    }

    /// Waits for background work (flusher, zero-fill) to finish; for tests that drop a
    /// partition and simulate a crash.
    #[doc(hidden)]
    pub async fn wait_idle_for_tests(&self) {
        self.wait_idle().await
    }

    /// Marks the partition closed and deletes its files and directory (and the topic's
    /// directory when this was its last partition).
    pub(crate) async fn destroy(&self) -> Result<()> {
        self.state.borrow_mut().closed = true;
        self.changed.notify_all();
        self.wait_idle().await;
        let names = self
            .storage
            .list_dir(&self.dir)
            .await
            .map_err(|e| EngineError::io("list", &self.dir, e))?;
        for name in names {
            let path = self.dir.join(name);
            self.storage
                .remove_file(&path)
                .await
                .map_err(|e| EngineError::io("remove", &path, e))?;
        }
        self.storage
            .remove_dir(&self.dir)
            .await
            .map_err(|e| EngineError::io("remove dir", &self.dir, e))?;
        let Some(topic_dir) = self.dir.parent() else {
            return Ok(());
        };
        // The topic's directory goes with its last partition (ENOTEMPTY otherwise: keep it).
        let synced = match self.storage.remove_dir(topic_dir).await {
            Ok(()) => topic_dir.parent().unwrap_or(topic_dir),
            Err(_) => topic_dir,
        };
        self.storage
            .sync_dir(synced)
            .await
            .map_err(|e| EngineError::io("fsync dir", synced, e))
    }
}

/// A round cut from the tail, not yet written.
struct WantedRound<B> {
    round: Round<B>,
    end_offset: u64,
    /// When the oldest append it carries was encoded.
    first_append: Instant,
}

/// A round whose writes completed and whose fdatasync is pending.
struct Written<B> {
    end_pos: u64,
    end_offset: u64,
    started: Instant,
    /// From its oldest append until its writes were issued.
    waited: Duration,
    /// From issuing its writes until all completed.
    write_time: Duration,
    /// The round's buffers, kept after publishing so tailing readers read them from memory.
    writes: Vec<(u64, Rc<B>)>,
}

/// fdatasync, never retried: after a failure the kernel may have dropped the dirty pages. So
/// its errors are never [`EngineError::NoSpace`] (which the flusher retries), even for ENOSPC.
async fn fdatasync<F: StorageFile>(file: &F, path: &Path) -> Result<()> {
    file.fdatasync().await.map_err(|source| EngineError::Io {
        op: "fdatasync",
        path: path.to_path_buf(),
        source,
    })
}

enum Job {
    Sync,
    Roll,
    Checkpoint,
}

fn new_segment<F: StorageFile>(
    base_offset: u64,
    salt: u32,
    path: PathBuf,
    file: Rc<F>,
    now_ms: i64,
) -> Segment<F> {
    Segment {
        base_offset,
        salt,
        path,
        file,
        data_bytes: 0,
        next_offset: base_offset,
        max_timestamp_ms: i64::MIN,
        created_ms: now_ms,
        index: Default::default(),
        mapped: None,
        map_readers: Default::default(),
        sealed: false,
    }
}

/// Zero-fills the first [`PREZERO_GAP_BYTES`] of a new segment (when enabled).
pub(crate) async fn prezero_new_segment<F: StorageFile>(
    config: &PartitionConfig,
    file: &F,
    path: &Path,
) -> Result<u64> {
    if !config.prezero_segments {
        return Ok(0);
    }
    let len = PREZERO_GAP_BYTES.min(align_up(config.segment_bytes_max));
    write_zeros(file, 0, len)
        .await
        .map_err(|e| EngineError::io("prezero", path, e))?;
    fdatasync(file, path).await?;
    Ok(len)
}

/// Writes `len` zero bytes at `pos` (one request).
async fn write_zeros<F: StorageFile>(file: &F, pos: u64, len: u64) -> io::Result<()> {
    assert!(len as usize <= IO_REQUEST_BYTES_MAX);
    let mut buf = file.alloc_buffer(len as usize);
    buf.as_bytes_mut().fill(0);
    file.write_at(Rc::new(buf), pos).await
}

type WriteFuture<'a> = Pin<Box<dyn Future<Output = io::Result<()>> + 'a>>;

/// Issues every write of a round at once and waits for all; the first error wins.
async fn write_all<F: StorageFile>(file: &F, writes: Vec<(u64, Rc<F::Buffer>)>) -> io::Result<()> {
    let mut pending: Vec<Option<WriteFuture<'_>>> = writes
        .into_iter()
        .map(|(pos, buf)| Some(Box::pin(file.write_at(buf, pos)) as WriteFuture<'_>))
        .collect();
    let mut first_error = None;
    poll_fn(|cx| {
        let mut busy = false;
        for slot in pending.iter_mut() {
            if let Some(fut) = slot {
                match fut.as_mut().poll(cx) {
                    Poll::Ready(result) => {
                        if let Err(e) = result {
                            first_error.get_or_insert(e);
                        }
                        *slot = None;
                    }
                    Poll::Pending => busy = true,
                }
            }
        }
        if busy { Poll::Pending } else { Poll::Ready(()) }
    })
    .await;
    first_error.map_or(Ok(()), Err)
}
