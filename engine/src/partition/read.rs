//! Reading a partition: locate the segment (by base offset) and the batch (sparse index), then
//! walk whole batches, verifying each CRC. Segments are read through a memory map (zero-copy:
//! returned values share the mapping; the active segment's map is renewed when the durable
//! end passes it), except the newest durable data, which is copied from the last sync round's
//! buffers still in memory (O_DIRECT writes leave nothing in the page cache, so a tailing
//! reader would otherwise fault every new batch in from disk). A tailing reader resumes where
//! its previous read stopped (a one-entry hint) instead of at the previous index entry.
//! Nothing past the durable point is ever returned. Cost: a page fault on cold data blocks the
//! executor (the price of zero-copy reads without DMA reads).

use std::rc::Rc;

use bytes::Bytes;

use super::Partition;
use crate::error::{EngineError, Result};
use crate::format::{BATCH_HEADER_BYTES, BatchView, decode_header, record_parts_encoded_bytes};
use crate::storage::{IoBuffer, Storage, StorageFile};
use crate::types::{BatchReadResult, ReadLimits, ReadResult, StoredRecord};

/// Smallest window read from the active segment per file read.
const READ_WINDOW_BYTES_MIN: u64 = 64 * 1024;
/// Most batches one read walks (bounds the work of a read with tiny limits).
const READ_BATCHES_MAX: usize = 100_000;

/// A snapshot of what one step of a read needs from one segment.
struct Span<B> {
    map: Bytes,
    /// Buffers of the last sync round (active segment only), by file position.
    recent: Vec<(u64, Rc<B>)>,
    /// Base offset of the segment, and whether it is the active one.
    base_offset: u64,
    /// Seed of the segment's batch CRCs.
    salt: u32,
    active: bool,
    path: std::path::PathBuf,
    /// Byte position to start walking at (an indexed batch at or before the target).
    pos: u64,
    /// Offset of the batch at `pos`.
    offset: u64,
    /// Readable end: durable end for the active segment, data end for a sealed one.
    end_pos: u64,
    /// Offset after the last readable batch of the segment.
    end_offset: u64,
}

impl<S: Storage> Partition<S> {
    /// Reads records from `offset`, within `limits`, never past the durable offset. Below the
    /// log start (or past the log end): [`EngineError::OffsetOutOfRange`].
    pub async fn read(&self, offset: u64, limits: ReadLimits) -> Result<ReadResult> {
        let batches = self.read_views(offset, limits).await?;
        let mut result = ReadResult {
            records: Vec::new(),
            next_offset: offset,
        };
        let mut bytes = 0usize;
        'outer: for view in batches {
            for record in view.records() {
                let r = record
                    .map_err(|e| self.corrupt_on_read(view.header().base_offset, e.to_string()))?;
                if r.offset < offset {
                    continue;
                }
                let full = result.records.len() >= limits.max_records || bytes >= limits.max_bytes;
                if full && !result.records.is_empty() {
                    break 'outer;
                }
                // Headers and framing count too: a reader sizing an answer by this budget
                // must not be surprised by records made mostly of headers.
                bytes += record_parts_encoded_bytes(r.key.as_ref(), &r.value, &r.headers);
                result.next_offset = r.offset + 1;
                result.records.push(StoredRecord {
                    offset: r.offset,
                    key: r.key,
                    value: r.value,
                    timestamp_ms: r.timestamp_ms,
                    headers: r.headers,
                });
            }
        }
        Ok(result)
    }

    /// Reads whole encoded batches (exactly the stored bytes) starting with the one holding
    /// `offset`. `max_bytes` counts batch bytes; at least one batch is returned if available.
    /// A recycled segment's batches carry CRCs seeded with its private salt: never hand these
    /// bytes to a client as they are (it could learn the salt), decode them (`read`).
    pub async fn read_batches(&self, offset: u64, limits: ReadLimits) -> Result<BatchReadResult> {
        let views = self.read_views(offset, limits).await?;
        let next_offset = views.last().map_or(offset, |v| v.header().next_offset());
        Ok(BatchReadResult {
            batches: views.into_iter().map(|v| v.bytes().clone()).collect(),
            next_offset,
        })
    }

    /// Offset of the first record with a timestamp at or after `timestamp_ms`, if any is durable.
    pub async fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<u64>> {
        let start = {
            let st = self.state.borrow();
            let Some(seg) = st
                .segments
                .iter()
                .find(|s| s.max_timestamp_ms >= timestamp_ms)
            else {
                return Ok(None);
            };
            let pos = seg.index.lookup_time(timestamp_ms);
            seg.index
                .entries
                .iter()
                .find(|e| e.pos == pos)
                .map_or(seg.base_offset, |e| e.offset)
        };
        let mut from = start;
        let limits = ReadLimits {
            max_bytes: 1024 * 1024,
            max_records: usize::MAX,
        };
        loop {
            let views = match self.read_views(from, limits).await {
                Ok(v) => v,
                Err(EngineError::OffsetOutOfRange { .. }) => return Ok(None),
                Err(e) => return Err(e),
            };
            let Some(last) = views.last() else {
                return Ok(None);
            };
            from = last.header().next_offset();
            for view in views
                .iter()
                .filter(|v| v.header().max_timestamp_ms >= timestamp_ms)
            {
                for record in view.records().flatten() {
                    if record.timestamp_ms >= timestamp_ms {
                        return Ok(Some(record.offset));
                    }
                }
            }
        }
    }

    fn corrupt_on_read(&self, offset: u64, detail: String) -> EngineError {
        let path = self.dir.clone();
        let err = EngineError::Corruption {
            partition: self.id.clone(),
            path,
            position: 0,
            offset,
            detail,
        };
        self.set_fault(err.to_string(), true);
        err
    }

    /// Snapshot of the segment holding `offset` (None: nothing durable there).
    fn span(&self, offset: u64) -> Result<Option<Span<<S::File as StorageFile>::Buffer>>> {
        let mut st = self.state.borrow_mut();
        if let Some(f) = st.fault.as_ref().filter(|f| f.reads_refused) {
            return Err(self.faulted(f));
        }
        let log_start = st.segments.front().map_or(st.log_end, |s| s.base_offset);
        if offset < log_start || offset > st.log_end {
            let (partition, log_end) = (self.id.clone(), st.log_end);
            return Err(EngineError::OffsetOutOfRange {
                partition,
                requested: offset,
                log_start,
                log_end,
            });
        }
        if offset >= st.durable_offset {
            return Ok(None);
        }
        let (durable_pos, durable_offset) = (st.durable_pos, st.durable_offset);
        let i = st
            .segments
            .partition_point(|s| s.base_offset <= offset)
            .saturating_sub(1);
        let active = i + 1 == st.segments.len();
        let recent = if active {
            st.recent_writes.clone()
        } else {
            Vec::new()
        };
        let hint = st.read_hint;
        let seg = &mut st.segments[i];
        let (mut pos, mut start) = seg
            .index
            .lookup(offset)
            .map_or((0, seg.base_offset), |e| (e.pos, e.offset));
        if let Some((base, hint_offset, hint_pos)) = hint
            && base == seg.base_offset
            && hint_offset > start
            && hint_offset <= offset
        {
            (pos, start) = (hint_pos, hint_offset);
        }
        let (end_pos, end_offset) = if seg.sealed {
            (seg.data_bytes, seg.next_offset)
        } else {
            (durable_pos, durable_offset)
        };
        if seg
            .mapped
            .as_ref()
            .is_none_or(|m| (m.len() as u64) < end_pos)
        {
            let map = seg
                .file
                .map_readonly()
                .map_err(|e| EngineError::io("mmap", &seg.path, e))?;
            seg.mapped = Some(seg.counted_map(map));
        }
        let map = seg.mapped.clone().unwrap_or_default();
        Ok(Some(Span {
            map,
            recent,
            base_offset: seg.base_offset,
            salt: seg.salt,
            active,
            path: seg.path.clone(),
            pos,
            offset: start,
            end_pos,
            end_offset,
        }))
    }

    /// Bytes of the segment from `pos`: at least `needed`, at most `len`. From the last
    /// round's buffers when one holds `[pos, pos + needed)`, else from the memory map.
    fn load(
        &self,
        span: &Span<<S::File as StorageFile>::Buffer>,
        pos: u64,
        len: u64,
        needed: u64,
    ) -> Result<Bytes> {
        for (file_pos, buf) in &span.recent {
            let bytes = buf.as_bytes();
            let buf_end = file_pos + bytes.len() as u64;
            if pos >= *file_pos && pos + needed <= buf_end {
                let at = (pos - file_pos) as usize;
                let end = (pos + len).min(buf_end) - file_pos;
                self.state.borrow_mut().stats.tail_reads_from_memory += 1;
                return Ok(Bytes::copy_from_slice(&bytes[at..end as usize]));
            }
        }
        let (start, end) = (pos as usize, (pos + len) as usize);
        if end > span.map.len() {
            return Err(self.corrupt_on_read(
                span.offset,
                format!("{:?} shorter than its data", span.path),
            ));
        }
        Ok(span.map.slice(start..end))
    }

    /// Verified batches from the one holding `offset`, within `limits` (at least one).
    async fn read_views(&self, offset: u64, limits: ReadLimits) -> Result<Vec<BatchView>> {
        let mut views = Vec::new();
        let (mut bytes, mut records) = (0usize, 0usize);
        let mut next = offset;
        while views.len() < READ_BATCHES_MAX {
            let Some(span) = self.span(next)? else { break };
            let done = self
                .walk_segment(&span, next, limits, &mut views, &mut bytes, &mut records)
                .await?;
            if done {
                break;
            }
            next = span.end_offset;
        }
        Ok(views)
    }

    /// Walks one segment's batches from the span start; true when the limits are reached.
    async fn walk_segment(
        &self,
        span: &Span<<S::File as StorageFile>::Buffer>,
        target: u64,
        limits: ReadLimits,
        views: &mut Vec<BatchView>,
        bytes: &mut usize,
        records: &mut usize,
    ) -> Result<bool> {
        let (mut pos, mut expected) = (span.pos, span.offset);
        let want =
            (limits.max_bytes as u64).saturating_add(u64::from(self.config.index_interval_bytes));
        let mut window = Bytes::new();
        let mut window_pos = pos;
        let mut full = false;
        while pos < span.end_pos && views.len() < READ_BATCHES_MAX {
            full = *bytes >= limits.max_bytes || *records >= limits.max_records;
            if full && !views.is_empty() {
                break;
            }
            full = false;
            let at = (pos - window_pos) as usize;
            let header_len =
                decode_header(window.get(at..).unwrap_or(&[])).map(|h| h.batch_bytes as usize);
            let needed = header_len.as_ref().map_or(BATCH_HEADER_BYTES, |n| *n);
            if window.len() < at + needed {
                if span.end_pos - pos < needed as u64 {
                    return Err(self.corrupt_on_read(
                        expected,
                        format!(
                            "{:?}: batch at byte {pos} runs past the readable end",
                            span.path
                        ),
                    ));
                }
                let len =
                    (span.end_pos - pos).min(want.max(READ_WINDOW_BYTES_MIN).max(needed as u64));
                window = self.load(span, pos, len, needed as u64)?;
                window_pos = pos;
                continue;
            }
            let view = BatchView::parse_salted(&window.slice(at..), span.salt).map_err(|e| {
                self.corrupt_on_read(expected, format!("{:?} byte {pos}: {e}", span.path))
            })?;
            let h = *view.header();
            if h.base_offset != expected {
                return Err(self.corrupt_on_read(
                    expected,
                    format!("batch at byte {pos} has offset {}", h.base_offset),
                ));
            }
            pos += u64::from(h.batch_bytes);
            expected = h.next_offset();
            if h.next_offset() <= target {
                continue;
            }
            *bytes += h.batch_bytes as usize;
            *records += (h.next_offset() - target.max(h.base_offset)) as usize;
            views.push(view);
        }
        if span.active {
            self.state.borrow_mut().read_hint = Some((span.base_offset, expected, pos));
        }
        Ok(full)
    }
}
