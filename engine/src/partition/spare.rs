//! Segment recycling: a segment retired by retention becomes the partition's next segment.
//!
//! On ext4 an O_DIRECT write into blocks never written before allocates: io_uring runs it on a
//! worker thread instead of inline (measured), and it most likely holds the inode lock and
//! leaves a journal commit for the next fdatasync (inferred; docs/benchmarks.md, "Where the
//! producer's tail comes from"). The active segment is therefore zero-filled ahead of the
//! writer (`Partition::maybe_prezero`), but those allocating fills slow the rounds they run
//! beside. Overwriting blocks that are already written does none of that. So when retention
//! retires a segment, the partition keeps its file as a spare (renamed to
//! [`SPARE_FILE_NAME`]), overwrites it with zeros in the background, paced, and the next roll
//! renames it in as the new segment, already zero-filled to its full size. In steady state
//! (retention on) no sync round writes into unallocated blocks.
//!
//! Invariants:
//! - A segment file holds only its own batches and zeros: a spare is renamed in only after
//!   all of it is zero-filled and synced, so recovery and its evidence checks are unchanged.
//! - A retired file is recycled only when no reader holds bytes of it
//!   ([`Segment::held_by_readers`]); otherwise it is removed as before (a reader of an
//!   unlinked file keeps its bytes).
//! - At most one spare per partition, and only a partition that rolls by size gets one: a
//!   retired segment less than half full (rolled by age: a cold partition) is deleted, so cold
//!   partitions never hold a segment's worth of zeros on disk. A spare left by a crash or a
//!   shutdown is removed on open (`remove_leftovers`): it may be half zero-filled.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use super::{Partition, zero_buffer};
use crate::error::{EngineError, Result};
use crate::segment::{Segment, align_up};
use crate::storage::{OpenMode, Storage, StorageFile};

/// The file name of a partition's spare segment (never parsed as a segment).
pub(crate) const SPARE_FILE_NAME: &str = "recycled.spare";
/// One zero-fill write of a spare (an overwrite: no allocation, no journal commit).
const SPARE_ZERO_WRITE_BYTES: usize = 256 * 1024;
/// Pause between two zero-fill writes of a spare: at most 512 MiB/s of zeros per partition
/// (a 128 MiB segment takes at least 0.25 s; a producer at 1 M records/s fills one in about
/// 1 s: 16-17 rolls of 64 MiB in 9 s were measured), so the spare is ready in time, and each
/// sync round's flush carries only a few of them.
const SPARE_ZERO_PAUSE: Duration = Duration::from_micros(500);

/// The partition's spare segment file.
pub(super) enum Spare<F> {
    /// None: the next roll creates a fresh file.
    Absent,
    /// A retired file is being zero-filled.
    Zeroing,
    /// Zero-filled and synced to the full segment size; the next roll renames it in.
    Ready(Rc<F>),
}

impl<S: Storage> Partition<S> {
    fn spare_path(&self) -> PathBuf {
        self.dir.join(SPARE_FILE_NAME)
    }

    /// Picks one retired segment to recycle (when enabled, no spare exists, the segment was
    /// rolled full and no reader holds it) and marks the spare as being zero-filled. The caller
    /// renames it with [`Self::keep_as_spare`], or sets the spare back to `Absent` if retiring
    /// fails.
    pub(super) fn take_recyclable(
        &self,
        doomed: &mut Vec<Segment<S::File>>,
    ) -> Option<Segment<S::File>> {
        let mut st = self.state.borrow_mut();
        if !self.config.recycle_segments
            || !matches!(st.spare, Spare::Absent)
            || st.closed
            || st.fault.is_some()
        {
            return None;
        }
        let full = |s: &Segment<S::File>| s.data_bytes >= self.config.segment_bytes_max / 2;
        let i = doomed
            .iter_mut()
            .position(|s| full(s) && !s.held_by_readers())?;
        st.spare = Spare::Zeroing;
        Some(doomed.swap_remove(i))
    }

    /// Renames a retired segment's file to the spare's name (durable with the caller's
    /// directory sync) and returns the path to zero-fill.
    pub(super) async fn keep_as_spare(&self, segment: &Segment<S::File>) -> Result<PathBuf> {
        let spare = self.spare_path();
        self.storage
            .rename(&segment.path, &spare)
            .await
            .map_err(|e| EngineError::io("rename", &segment.path, e))?;
        Ok(spare)
    }

    /// Zero-fills the spare in the background, then offers it to the next roll.
    pub(super) fn spawn_spare_zeroing(&self, path: PathBuf) {
        let Some(me) = self.me.upgrade() else {
            self.state.borrow_mut().spare = Spare::Absent;
            return;
        };
        self.storage.spawn_background(async move {
            let zeroed = me.zero_spare(&path).await;
            me.state.borrow_mut().spare = match zeroed {
                Ok(Some(file)) => Spare::Ready(file),
                Ok(None) => Spare::Absent,
                Err(e) => {
                    tracing::warn!(partition = %me.id, error = %e, "spare segment dropped");
                    Spare::Absent
                }
            };
            me.changed.notify_all();
        });
    }

    /// Overwrites the spare with zeros up to the segment size, paced and within the shard's
    /// zero-fill budget, then fdatasyncs it. `None` when the partition closed or faulted first.
    async fn zero_spare(&self, path: &Path) -> Result<Option<Rc<S::File>>> {
        let io = |op| move |e| EngineError::io(op, path, e);
        let file = self
            .storage
            .open(path, OpenMode::ReadWrite)
            .await
            .map_err(io("open"))?;
        let target = self.spare_bytes();
        if file.size().await.map_err(io("size"))? > target {
            file.truncate(target).await.map_err(io("truncate"))?;
        }
        let zeros = Rc::new(zero_buffer(&file, SPARE_ZERO_WRITE_BYTES));
        let mut pos = 0;
        while pos < target {
            if self.stopped() {
                return Ok(None);
            }
            let Some(permit) = self.zero_fill.try_acquire() else {
                self.storage.pause(SPARE_ZERO_PAUSE).await;
                continue;
            };
            let len = (target - pos).min(SPARE_ZERO_WRITE_BYTES as u64) as usize;
            let buf = if len == SPARE_ZERO_WRITE_BYTES {
                zeros.clone()
            } else {
                Rc::new(zero_buffer(&file, len))
            };
            file.write_at(buf, pos).await.map_err(io("zero-fill"))?;
            drop(permit);
            pos += len as u64;
            self.storage.pause(SPARE_ZERO_PAUSE).await;
        }
        file.fdatasync().await.map_err(io("fdatasync"))?;
        Ok(Some(Rc::new(file)))
    }

    /// How far a spare is zero-filled: the whole (aligned) segment size.
    fn spare_bytes(&self) -> u64 {
        align_up(self.config.segment_bytes_max)
    }

    fn stopped(&self) -> bool {
        let st = self.state.borrow();
        st.closed || st.fault.is_some()
    }

    /// Renames a ready spare to `path` (the caller syncs the directory); returns its file and
    /// how far it is zero-filled, or `None` when no spare is ready.
    pub(super) async fn take_ready_spare(&self, path: &Path) -> Result<Option<(Rc<S::File>, u64)>> {
        let file = {
            let mut st = self.state.borrow_mut();
            match std::mem::replace(&mut st.spare, Spare::Absent) {
                Spare::Ready(file) => file,
                other => {
                    st.spare = other;
                    return Ok(None);
                }
            }
        };
        let from = self.spare_path();
        self.storage
            .rename(&from, path)
            .await
            .map_err(|e| EngineError::io("rename", &from, e))?;
        self.state.borrow_mut().stats.segments_recycled += 1;
        Ok(Some((file, self.spare_bytes())))
    }
}
