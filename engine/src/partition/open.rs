//! Opening a partition: create it, or recover it from its checkpoint and segments.
//!
//! Recovery reads the checkpoint (durable position, active index, producer table), trusts
//! sealed segments with a valid index file, and scans only what lies past the checkpoint (plus
//! any sealed segment whose index is missing or damaged). The scan's verdicts come from the
//! decision table in `recovery.rs`. A torn tail is cut by zero-filling the bytes a crashed
//! round could have touched; corruption leaves every byte as it is and faults the partition.
//!
//! Past the torn zone, later synced data is the proof that an invalid batch was acknowledged
//! (corruption, not a torn tail). In an unsalted segment any non-zero byte there is such data;
//! in a salted one (a recycled file) only a batch of this segment is: see
//! `recovery::find_salted_batch`.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::Bytes;

use super::tail::Tail;
use super::{
    Fault, Partition, SPARE_FILE_NAME, State, SyncRoundRecorder, UNSYNCED_BYTES_MAX,
    ZeroFillBudget, new_segment,
};
use crate::checkpoint::{CHECKPOINT_FILE, CHECKPOINT_TMP_FILE, Checkpoint};
use crate::error::{EngineError, Result};
use crate::format::{BATCH_BYTES_MAX, BatchHeader};
use crate::notify::Notify;
use crate::producer::{ProducerBatch, ProducerTable};
use crate::recovery::{SaltedSearch, ScanEnd, ScanOutcome, find_salted_batch, scan_batches};
use crate::segment::{
    IndexEntry, IndexImage, Segment, SparseIndex, align_down, align_up, index_file_name,
    parse_segment_name, read_whole_file, segment_file_name, write_whole_file,
};
use crate::storage::{
    IO_ALIGN_BYTES, IO_REQUEST_BYTES_MAX, IoBuffer, OpenMode, Storage, StorageFile,
};
use crate::types::{PartitionConfig, PartitionId, PartitionStats};

/// Largest recovery-scan window (a whole batch always fits in one).
const SCAN_WINDOW_BYTES: usize = 4 * 1024 * 1024;
/// First recovery-scan window; doubled while more is needed (most tails are short).
const SCAN_WINDOW_BYTES_MIN: usize = 64 * 1024;
/// Bytes past the recovered end that a crashed round may have touched: zero-filled on open.
const TORN_ZONE_BYTES: u64 = UNSYNCED_BYTES_MAX + 2 * IO_ALIGN_BYTES as u64;
/// Bytes past the torn zone searched for later synced data. Batches are contiguous and each
/// starts with a non-zero length, so any window this long inside the data holds a batch
/// start: searching further finds nothing a shorter search would miss (and the rest of the
/// file can be large: zeros, or a recycled file's earlier life).
const EVIDENCE_WINDOW_BYTES: u64 = BATCH_BYTES_MAX as u64 + IO_ALIGN_BYTES as u64;
/// Most bytes checksummed while searching a salted segment's evidence window for one of its
/// batches. Stale batches cost none (their offsets fail first); only batch-shaped bytes with
/// plausible offsets inside record values cost a CRC pass, and a budget this size (about
/// 60 ms at the 16 GiB/s of `codec/crc32_1MiB` in docs/benchmarks.md) runs out only if a
/// client planted many. Running out counts as evidence: refusing
/// service is recoverable, cutting acknowledged data is not.
const EVIDENCE_CRC_BYTES_MAX: u64 = 1 << 30;

const _: () =
    assert!(SCAN_WINDOW_BYTES >= BATCH_BYTES_MAX && SCAN_WINDOW_BYTES_MIN <= SCAN_WINDOW_BYTES);

/// What recovery rebuilt, before the partition object exists.
struct Recovered<F: StorageFile> {
    segments: VecDeque<Segment<F>>,
    producers: ProducerTable,
    fault: Option<Fault>,
    durable_pos: u64,
    last_page: Vec<u8>,
    /// The active segment's blocks are written up to here.
    allocated_to: u64,
}

/// Accumulates what a scan learns about a segment.
struct ScanSink<'a> {
    index: &'a mut SparseIndex,
    max_timestamp_ms: &'a mut i64,
    producers: &'a mut ProducerTable,
    interval_bytes: u32,
}

impl ScanSink<'_> {
    fn on_batch(&mut self, pos: u64, h: &BatchHeader) {
        *self.max_timestamp_ms = (*self.max_timestamp_ms).max(h.max_timestamp_ms);
        let entry = IndexEntry {
            offset: h.base_offset,
            pos,
            max_timestamp_ms: *self.max_timestamp_ms,
        };
        self.index.maybe_add(entry, self.interval_bytes);
        if let Some(p) = h.producer {
            let batch = ProducerBatch {
                sequence: p.sequence,
                record_count: h.record_count,
                base_offset: h.base_offset,
            };
            self.producers.record(p.producer_id, batch);
        }
    }
}

struct Ctx<'a, S: Storage> {
    id: &'a PartitionId,
    dir: &'a Path,
    config: &'a PartitionConfig,
    storage: &'a S,
}

impl<S: Storage> Ctx<'_, S> {
    fn io(&self, op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> EngineError {
        let path = path.to_path_buf();
        move |e| EngineError::io(op, path, e)
    }

    async fn scan_file(
        &self,
        (file, salt): (&S::File, u32),
        path: &Path,
        start: (u64, u64),
        file_bytes: u64,
        durable_pos: u64,
        sink: &mut ScanSink<'_>,
    ) -> Result<ScanOutcome> {
        let (mut pos, mut offset) = start;
        let mut window_bytes = SCAN_WINDOW_BYTES_MIN;
        loop {
            let want = (file_bytes.saturating_sub(pos)).min(window_bytes as u64) as usize;
            let window = file
                .read_at(pos, want)
                .await
                .map_err(self.io("read", path))?;
            let at_eof = pos + window.len() as u64 >= file_bytes;
            let out = scan_batches(&window, salt, pos, offset, durable_pos, at_eof, |p, h| {
                sink.on_batch(p, h)
            });
            if out.end != ScanEnd::NeedMore {
                return Ok(out);
            }
            if out.end_pos == pos && window_bytes == SCAN_WINDOW_BYTES {
                let e = std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "short read during recovery",
                );
                return Err(EngineError::io("read", path, e));
            }
            window_bytes = (window_bytes * 2).min(SCAN_WINDOW_BYTES);
            (pos, offset) = (out.end_pos, out.next_offset);
        }
    }

    fn corruption(&self, path: &Path, out: &ScanOutcome, detail: &str) -> Fault {
        let e = EngineError::Corruption {
            partition: self.id.clone(),
            path: path.to_path_buf(),
            position: out.end_pos,
            offset: out.next_offset,
            detail: detail.to_string(),
        };
        Fault {
            reason: e.to_string(),
            reads_refused: true,
        }
    }

    async fn load_checkpoint(&self) -> Option<Checkpoint> {
        let path = self.dir.join(CHECKPOINT_FILE);
        let bytes = read_whole_file(self.storage, &path).await.ok()?;
        let cp = Checkpoint::decode(&bytes);
        if cp.is_none() {
            tracing::warn!(partition = %self.id, "checkpoint missing or damaged: scanning segments");
        }
        cp
    }

    /// Opens a sealed segment: index file if valid, else a full scan (all of it is durable).
    async fn open_sealed(
        &self,
        (base, salt): (u64, u32),
        replay: bool,
        producers: &mut ProducerTable,
    ) -> Result<(Segment<S::File>, Option<Fault>)> {
        let path = self.dir.join(segment_file_name(base, salt));
        let file = self
            .storage
            .open(&path, OpenMode::ReadOnly)
            .await
            .map_err(self.io("open", &path))?;
        let mut size = file.size().await.map_err(self.io("size", &path))?;
        let index_path = self.dir.join(index_file_name(base));
        let mut image = match read_whole_file(self.storage, &index_path).await {
            Ok(bytes) => {
                IndexImage::decode(&bytes).filter(|i| i.base_offset == base && i.data_bytes <= size)
            }
            Err(_) => None,
        };
        if let Some(data_bytes) = image.as_ref().map(|i| i.data_bytes)
            && data_bytes < size
        {
            if self.trim_zero_slack(&file, &path, data_bytes, size).await? {
                size = data_bytes;
            } else {
                image = None;
            }
        }
        let mut segment = new_segment(base, salt, path.clone(), Rc::new(file), 0);
        segment.sealed = true;
        segment.data_bytes = size;
        if let Some(image) = &image
            && !replay
        {
            segment.next_offset = image.next_offset;
            segment.max_timestamp_ms = image.max_timestamp_ms;
            segment.index = image.index.clone();
            return Ok((segment, None));
        }
        let mut sink = ScanSink {
            index: &mut segment.index,
            max_timestamp_ms: &mut segment.max_timestamp_ms,
            producers,
            interval_bytes: self.config.index_interval_bytes,
        };
        let out = self
            .scan_file(
                (&segment.file, salt),
                &path,
                (0, base),
                size,
                size,
                &mut sink,
            )
            .await?;
        segment.next_offset = out.next_offset;
        if let ScanEnd::Corrupt(detail) = &out.end {
            return Ok((segment, Some(self.corruption(&path, &out, detail))));
        }
        if image.is_none() {
            tracing::info!(partition = %self.id, base, "rebuilt missing or damaged segment index");
            let image = segment.index_image(size, out.next_offset);
            let written = async {
                let f = self
                    .storage
                    .open(&index_path, OpenMode::CreateTruncate)
                    .await?;
                write_whole_file(&f, &image.encode()).await
            };
            if let Err(e) = written.await {
                tracing::warn!(partition = %self.id, error = %e, "cannot rewrite segment index");
            }
        }
        Ok((segment, None))
    }

    /// A sealed segment longer than its valid index says: a zero-fill that landed after the
    /// seal had truncated the file (possible before seals waited for fills). If everything
    /// past the index's end is zeros, the index is right: the file is trimmed back (a failed
    /// trim only leaves the zeros) and true is returned. Anything else there: false.
    async fn trim_zero_slack(
        &self,
        file: &S::File,
        path: &Path,
        data_bytes: u64,
        size: u64,
    ) -> Result<bool> {
        if !self.all_zero(file, path, data_bytes, size).await? {
            return Ok(false);
        }
        tracing::warn!(partition = %self.id, path = ?path, data_bytes, size, "zeros past a sealed segment's end: trimmed");
        let trimmed = async {
            let f = self.storage.open(path, OpenMode::ReadWrite).await?;
            f.truncate(data_bytes).await?;
            f.fdatasync().await
        };
        if let Err(e) = trimmed.await {
            tracing::warn!(partition = %self.id, path = ?path, error = %e, "cannot trim a sealed segment");
        }
        Ok(true)
    }

    /// Recovers the active segment from the checkpoint position (or its start).
    async fn open_active(
        &self,
        (base, salt): (u64, u32),
        cp: Option<&Checkpoint>,
        producers: &mut ProducerTable,
    ) -> Result<(Segment<S::File>, Option<Fault>, u64)> {
        let path = self.dir.join(segment_file_name(base, salt));
        let file = self
            .storage
            .open(&path, OpenMode::ReadWrite)
            .await
            .map_err(self.io("open", &path))?;
        let size = file.size().await.map_err(self.io("size", &path))?;
        let now_ms = self.storage.now_ms();
        let mut segment = new_segment(base, salt, path.clone(), Rc::new(file), now_ms);
        let mut start = (0, base);
        if let Some(cp) = cp.filter(|cp| cp.segment_base == base) {
            start = (cp.durable_pos, cp.durable_offset);
            segment.index = cp.active_index.index.clone();
            segment.max_timestamp_ms = cp.active_index.max_timestamp_ms;
            segment.created_ms = cp.segment_created_ms;
            if cp.durable_pos > size {
                let out = ScanOutcome {
                    end_pos: size,
                    next_offset: cp.durable_offset,
                    end: ScanEnd::NeedMore,
                };
                let fault = self.corruption(&path, &out, "segment shorter than its checkpoint");
                return Ok((segment, Some(fault), size));
            }
        }
        let mut sink = ScanSink {
            index: &mut segment.index,
            max_timestamp_ms: &mut segment.max_timestamp_ms,
            producers,
            interval_bytes: self.config.index_interval_bytes,
        };
        let out = self
            .scan_file(
                (&segment.file, salt),
                &path,
                start,
                size,
                start.0,
                &mut sink,
            )
            .await?;
        segment.data_bytes = out.end_pos;
        segment.next_offset = out.next_offset;
        if matches!(out.end, ScanEnd::TornTail(_) | ScanEnd::Clean)
            && self.later_data(&segment, &out, size).await?
        {
            // Everything not yet durable lies within UNSYNCED_BYTES_MAX (+ padding) of the
            // durable point, so data this far past `end_pos` proves `end_pos` was durable:
            // the bad batch is acknowledged data, not a torn tail.
            let fault =
                self.corruption(&path, &out, "invalid batch followed by later synced rounds");
            return Ok((segment, Some(fault), size));
        }
        match &out.end {
            ScanEnd::Corrupt(detail) => {
                return Ok((segment, Some(self.corruption(&path, &out, detail)), size));
            }
            ScanEnd::TornTail(why) => {
                tracing::warn!(partition = %self.id, pos = out.end_pos, offset = out.next_offset, %why, "torn tail cut");
            }
            ScanEnd::Clean | ScanEnd::NeedMore => {}
        }
        Ok((segment, None, size))
    }

    /// Zero-fills what a crashed round may have left past the end of the log (so no batch it
    /// wrote can ever be mistaken for a later append), keeping the bytes before it (the caller
    /// fdatasyncs: `sync_recovered`). Returns
    /// the bytes of the partial last page and the file's size after the cut. In a salted
    /// segment only a batch of this segment there needs cutting: the earlier life's bytes
    /// past the end stay as they are, so a clean restart writes nothing. When zeroing the
    /// zone would need space the disk lacks (it reaches past an unaligned end of file), the
    /// file is truncated at the end of the log instead: that needs none, and only gives up
    /// blocks written ahead of the writer.
    async fn cut_tail(
        &self,
        (file, salt): (&S::File, u32),
        path: &Path,
        (end_pos, end_offset): (u64, u64),
        file_bytes: u64,
    ) -> Result<(Vec<u8>, u64)> {
        let page_pos = align_down(end_pos);
        let page = file
            .read_at(page_pos, (end_pos - page_pos) as usize)
            .await
            .map_err(self.io("read", path))?;
        if page.len() as u64 != end_pos - page_pos {
            let e =
                std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "short read of last page");
            return Err(EngineError::io("read", path, e));
        }
        let zone_end = align_up(file_bytes.min(end_pos + TORN_ZONE_BYTES));
        let clean = if salt == 0 {
            zone_end <= end_pos || self.all_zero(file, path, end_pos, zone_end).await?
        } else {
            let (end, zone) = ((end_pos, end_offset), (end_pos, zone_end));
            !self
                .salted_batch_within(file, salt, path, end, zone, file_bytes)
                .await?
        };
        if clean {
            return Ok((page.to_vec(), file_bytes));
        }
        let file_bytes = match self
            .zero_torn_zone(file, path, &page, end_pos, zone_end)
            .await
        {
            Ok(()) => file_bytes,
            Err(EngineError::NoSpace { .. }) => {
                tracing::warn!(partition = %self.id, path = ?path, end_pos, "no space to zero the torn tail: truncated there");
                file.truncate(end_pos)
                    .await
                    .map_err(self.io("truncate", path))?;
                end_pos
            }
            Err(e) => return Err(e),
        };
        Ok((page.to_vec(), file_bytes))
    }

    /// Makes what recovery read durable before it is served as durable: after a process
    /// crash this process can read writes whose fdatasync never finished (the kernel still
    /// holds them), and a power loss would take them back. The directory too: segment names
    /// the dead process created may not be durable yet. Also makes a torn-tail cut durable.
    async fn sync_recovered(&self, file: &S::File, path: &Path) -> Result<()> {
        file.fdatasync().await.map_err(|source| EngineError::Io {
            op: "fdatasync",
            path: path.to_path_buf(),
            source,
        })?;
        self.storage
            .sync_dir(self.dir)
            .await
            .map_err(|source| EngineError::Io {
                op: "fsync dir",
                path: self.dir.to_path_buf(),
                source,
            })
    }

    /// Writes zeros from the page holding `end_pos` up to `zone_end`, keeping that page's
    /// bytes before `end_pos` (`page`).
    async fn zero_torn_zone(
        &self,
        file: &S::File,
        path: &Path,
        page: &[u8],
        end_pos: u64,
        zone_end: u64,
    ) -> Result<()> {
        let page_pos = align_down(end_pos);
        let mut pos = page_pos;
        while pos < zone_end {
            let n = (zone_end - pos).min(IO_REQUEST_BYTES_MAX as u64) as usize;
            let mut buf = file.alloc_buffer(n);
            let bytes = buf.as_bytes_mut();
            bytes.fill(0);
            if pos == page_pos {
                bytes[..page.len()].copy_from_slice(page);
            }
            file.write_at(Rc::new(buf), pos)
                .await
                .map_err(self.io("write", path))?;
            pos += n as u64;
        }
        Ok(())
    }

    /// Whether synced data of this segment lies past the torn zone that follows the scan's
    /// end (searched within [`EVIDENCE_WINDOW_BYTES`]).
    async fn later_data(
        &self,
        segment: &Segment<S::File>,
        out: &ScanOutcome,
        file_bytes: u64,
    ) -> Result<bool> {
        let from = out.end_pos + TORN_ZONE_BYTES;
        let to = file_bytes.min(from + EVIDENCE_WINDOW_BYTES);
        let (file, path) = (&*segment.file, &segment.path);
        if segment.salt == 0 {
            return self.written_beyond(file, path, from, to).await;
        }
        let end = (out.end_pos, out.next_offset);
        self.salted_batch_within(file, segment.salt, path, end, (from, to), file_bytes)
            .await
    }

    /// Whether a batch of the salted segment that ended at `end` (position, offset) may
    /// start in `[from, to)` (see `find_salted_batch`; an exhausted CRC budget says yes).
    async fn salted_batch_within(
        &self,
        file: &S::File,
        salt: u32,
        path: &Path,
        end: (u64, u64),
        (from, to): (u64, u64),
        file_bytes: u64,
    ) -> Result<bool> {
        if from >= to {
            return Ok(false);
        }
        // A batch starting in the range may run on for up to BATCH_BYTES_MAX.
        let read_to = file_bytes.min(to + BATCH_BYTES_MAX as u64);
        let window = file
            .read_at(from, (read_to - from) as usize)
            .await
            .map_err(self.io("read", path))?;
        let starts_within = (to - from) as usize;
        let mut budget = EVIDENCE_CRC_BYTES_MAX;
        let found = find_salted_batch(&window, from, starts_within, salt, end, &mut budget);
        if found == SaltedSearch::BudgetSpent {
            tracing::error!(partition = %self.id, path = ?path, "salted batch search ran out of its CRC budget");
        }
        Ok(found != SaltedSearch::NotFound)
    }

    /// Whether any byte in `[from, to)` is non-zero.
    async fn written_beyond(
        &self,
        file: &S::File,
        path: &Path,
        from: u64,
        to: u64,
    ) -> Result<bool> {
        if from >= to {
            return Ok(false);
        }
        Ok(!self.all_zero(file, path, from, to).await?)
    }

    async fn all_zero(&self, file: &S::File, path: &Path, from: u64, to: u64) -> Result<bool> {
        let mut pos = from;
        while pos < to {
            let n = (to - pos).min(SCAN_WINDOW_BYTES as u64) as usize;
            let bytes: Bytes = file.read_at(pos, n).await.map_err(self.io("read", path))?;
            if bytes.iter().any(|b| *b != 0) {
                return Ok(false);
            }
            if bytes.len() < n {
                return Ok(true);
            }
            pos += n as u64;
        }
        Ok(true)
    }

    async fn recover(&self, bases: &[(u64, u32)]) -> Result<Recovered<S::File>> {
        let cp = self.load_checkpoint().await;
        let replay_from = cp.as_ref().map_or(0, |c| c.segment_base);
        let mut producers = ProducerTable::default();
        for (id, batches) in cp.iter().flat_map(|c| c.producers.iter()) {
            for b in batches {
                producers.record(*id, *b);
            }
        }
        let (&active_base, sealed_bases) = bases.split_last().expect("recover needs a segment");
        let mut segments = VecDeque::with_capacity(bases.len());
        for &name in sealed_bases {
            let (segment, fault) = self
                .open_sealed(name, name.0 >= replay_from, &mut producers)
                .await?;
            let expected = segments.back().map(|s: &Segment<S::File>| s.next_offset);
            segments.push_back(segment);
            if let Some(fault) = fault.or_else(|| self.gap_fault(expected, name)) {
                return self.faulted(segments, producers, fault);
            }
        }
        let expected = segments.back().map(|s| s.next_offset);
        let (active, fault, file_bytes) = self
            .open_active(active_base, cp.as_ref(), &mut producers)
            .await?;
        let (path, end) = (active.path.clone(), (active.data_bytes, active.next_offset));
        let (file, salt) = (active.file.clone(), active.salt);
        segments.push_back(active);
        if let Some(fault) = fault.or_else(|| self.gap_fault(expected, active_base)) {
            return self.faulted(segments, producers, fault);
        }
        producers.retain_below(segments.back().map_or(0, |s| s.next_offset));
        let (last_page, file_bytes) = self.cut_tail((&file, salt), &path, end, file_bytes).await?;
        self.sync_recovered(&file, &path).await?;
        Ok(Recovered {
            segments,
            producers,
            fault: None,
            durable_pos: end.0,
            last_page,
            // The whole file is written: zeros past the end (cut_tail), or in a recycled file
            // its earlier life, no batch of which can pass for this segment's.
            allocated_to: align_down(file_bytes),
        })
    }

    fn gap_fault(&self, expected: Option<u64>, (base, salt): (u64, u32)) -> Option<Fault> {
        let expected = expected?;
        (expected != base).then(|| Fault {
            reason: EngineError::Corruption {
                partition: self.id.clone(),
                path: self.dir.join(segment_file_name(base, salt)),
                position: 0,
                offset: expected,
                detail: format!("segment starts at offset {base}, previous one ends at {expected}"),
            }
            .to_string(),
            reads_refused: true,
        })
    }

    fn faulted(
        &self,
        segments: VecDeque<Segment<S::File>>,
        producers: ProducerTable,
        fault: Fault,
    ) -> Result<Recovered<S::File>> {
        tracing::error!(partition = %self.id, reason = %fault.reason, "partition refuses service");
        // Nothing is written or read past this point: an empty tail at byte 0 suffices.
        Ok(Recovered {
            segments,
            producers,
            fault: Some(fault),
            durable_pos: 0,
            last_page: Vec::new(),
            allocated_to: 0,
        })
    }

    async fn create_fresh(&self) -> Result<Recovered<S::File>> {
        let path = self.dir.join(segment_file_name(0, 0));
        let file = self
            .storage
            .open(&path, OpenMode::CreateTruncate)
            .await
            .map_err(self.io("create", &path))?;
        let allocated_to = super::prezero_new_segment(self.config, &file, &path).await?;
        self.storage
            .sync_dir(self.dir)
            .await
            .map_err(self.io("fsync dir", self.dir))?;
        let segment = new_segment(0, 0, path, Rc::new(file), self.storage.now_ms());
        Ok(Recovered {
            segments: VecDeque::from([segment]),
            producers: ProducerTable::default(),
            fault: None,
            durable_pos: 0,
            last_page: Vec::new(),
            allocated_to,
        })
    }

    /// Creates the directory (and makes its entry durable in each new parent).
    async fn create_dir(&self) -> Result<()> {
        self.storage
            .create_dir_all(self.dir)
            .await
            .map_err(self.io("create dir", self.dir))?;
        let mut dir = self.dir;
        for _ in 0..3 {
            let Some(parent) = dir.parent() else { break };
            self.storage
                .sync_dir(parent)
                .await
                .map_err(self.io("fsync dir", parent))?;
            dir = parent;
        }
        Ok(())
    }

    /// Removes an unfinished checkpoint and a spare segment (the roll that would have renamed it
    /// in never happened).
    async fn remove_leftovers(&self, names: &[String]) -> Result<()> {
        let leftover = |n: &&String| [CHECKPOINT_TMP_FILE, SPARE_FILE_NAME].contains(&n.as_str());
        for name in names.iter().filter(leftover) {
            let path = self.dir.join(name);
            self.storage
                .remove_file(&path)
                .await
                .map_err(self.io("remove", &path))?;
        }
        Ok(())
    }
}

impl<S: Storage> Partition<S> {
    /// Creates (`create`) or opens and recovers the partition stored in `dir`.
    pub(crate) async fn open(
        id: PartitionId,
        dir: PathBuf,
        config: PartitionConfig,
        storage: Rc<S>,
        zero_fill: Rc<ZeroFillBudget>,
        rounds: Rc<SyncRoundRecorder>,
        create: bool,
    ) -> Result<Rc<Self>> {
        let ctx = Ctx {
            id: &id,
            dir: &dir,
            config: &config,
            storage: &*storage,
        };
        let exists = storage
            .dir_exists(&dir)
            .await
            .map_err(ctx.io("stat", &dir))?;
        if !exists && !create {
            return Err(EngineError::PartitionNotFound { partition: id });
        }
        if !exists {
            ctx.create_dir().await?;
        }
        let names = storage.list_dir(&dir).await.map_err(ctx.io("list", &dir))?;
        ctx.remove_leftovers(&names).await?;
        let mut bases: Vec<(u64, u32)> =
            names.iter().filter_map(|n| parse_segment_name(n)).collect();
        bases.sort_unstable();
        if let Some(pair) = bases.windows(2).find(|pair| pair[0].0 == pair[1].0) {
            return Err(EngineError::Corruption {
                partition: id,
                path: dir.join(segment_file_name(pair[1].0, pair[1].1)),
                position: 0,
                offset: pair[1].0,
                detail: "two segment files start at this offset".into(),
            });
        }
        let recovered = match (bases.is_empty(), create) {
            (true, false) => return Err(EngineError::PartitionNotFound { partition: id }),
            (true, true) => ctx.create_fresh().await?,
            (false, _) => ctx.recover(&bases).await?,
        };
        let healthy = recovered.fault.is_none();
        let partition = Self::assemble(id, dir, config, storage, zero_fill, rounds, recovered);
        if healthy && let Err(e) = partition.write_checkpoint().await {
            // Recovery is correct without it (the next one scans from the previous one), and
            // failing the open here would keep a full disk full: retention never runs.
            tracing::warn!(partition = %partition.id, error = %e, "no checkpoint after recovery");
        }
        Ok(partition)
    }

    fn assemble(
        id: PartitionId,
        dir: PathBuf,
        config: PartitionConfig,
        storage: Rc<S>,
        zero_fill: Rc<ZeroFillBudget>,
        rounds: Rc<SyncRoundRecorder>,
        r: Recovered<S::File>,
    ) -> Rc<Self> {
        let active = r
            .segments
            .back()
            .expect("recovery yields an active segment");
        let tail = Tail::new(&*active.file, r.durable_pos, &r.last_page);
        let log_end = active.next_offset;
        let state = State {
            tail,
            log_end,
            durable_offset: log_end,
            durable_pos: r.durable_pos,
            sync_wanted: log_end,
            flusher_running: false,
            roll_wanted: false,
            fault: r.fault,
            out_of_space: None,
            out_of_space_failures: 0,
            unwritten_round: None,
            closed: false,
            producers: r.producers,
            allocated_to: r.allocated_to,
            zeroing: None,
            zero_fill_syncing: false,
            zero_fills_ended: 0,
            last_round_bytes: 0,
            checkpoint_running: false,
            retiring: false,
            recent_writes: Vec::new(),
            read_hint: None,
            spawn_flusher: false,
            spawn_zero_fill: None,
            durable_bytes_since_checkpoint: 0,
            unrounded_since: None,
            spare: None,
            stats: PartitionStats::default(),
            segments: r.segments,
        };
        Rc::new_cyclic(|me| Partition {
            id,
            dir,
            config,
            storage,
            zero_fill,
            rounds,
            me: me.clone(),
            state: RefCell::new(state),
            changed: Notify::default(),
            append_queue: RefCell::new(VecDeque::new()),
            next_append_ticket: Cell::new(0),
        })
    }
}
