//! Segment recycling: a segment retired by retention becomes the partition's next segment.
//!
//! On ext4 an O_DIRECT write into blocks never written before allocates: io_uring runs it on a
//! worker thread instead of inline (measured), and it most likely holds the inode lock and
//! leaves a journal commit for the next fdatasync (inferred; docs/benchmarks.md, "Where the
//! producer's tail comes from"). A new segment is therefore zero-filled ahead of the writer
//! (`Partition::maybe_prezero`), but those allocating fills slow the rounds they run beside.
//! Overwriting blocks that are already written does none of that. So when retention retires a
//! segment, the partition keeps its file as a spare (renamed to [`SPARE_FILE_NAME`]) and the
//! next roll renames it in as the new segment, as it is: in steady state (retention on) no
//! sync round writes into unallocated blocks, and no zeros are written at all.
//!
//! Invariants:
//! - A recycled segment is salted: its name carries a random nonzero salt, different from the
//!   file's previous one, that seeds every batch CRC in it (`segment.rs`). Past its data the
//!   file holds its earlier life's bytes; recovery tells its own batches from those by offset
//!   (stale batches are below the segment's base) and by salt (a batch a client embedded in a
//!   record value cannot carry a valid salted CRC): see `recovery::find_salted_batch`.
//! - A retired file is recycled only when no reader holds bytes of it
//!   ([`Segment::held_by_readers`]); otherwise it is removed as before (a reader of an
//!   unlinked file keeps its bytes).
//! - At most one spare per partition, and only a partition that rolls by size gets one: a
//!   retired segment less than half full (rolled by age: a cold partition) is deleted, so cold
//!   partitions never hold a segment's worth of stale bytes on disk. A spare left by a crash
//!   or a shutdown is removed on open (`remove_leftovers`).

use std::path::PathBuf;
use std::rc::Rc;

use super::Partition;
use crate::error::{EngineError, Result};
use crate::segment::{Segment, align_down, segment_file_name};
use crate::storage::{OpenMode, Storage, StorageFile};

/// The file name of a partition's spare segment (never parsed as a segment).
pub(crate) const SPARE_FILE_NAME: &str = "recycled.spare";

/// The partition's spare segment file, ready for the next roll to rename in.
pub(super) struct Spare<F> {
    file: Rc<F>,
    /// The salt of the file's last life: the next one must differ.
    previous_salt: u32,
    /// Bytes of the file already written (its earlier life's size).
    written_bytes: u64,
}

/// A file ready to become the next segment: a renamed spare or a new file.
pub(super) struct NextSegment<F> {
    pub path: PathBuf,
    pub file: Rc<F>,
    /// Seed of its batch CRCs: nonzero for a recycled file, 0 for a new one.
    pub salt: u32,
    /// Blocks written up to here: writes below it allocate nothing.
    pub allocated_to: u64,
}

impl<S: Storage> Partition<S> {
    fn spare_path(&self) -> PathBuf {
        self.dir.join(SPARE_FILE_NAME)
    }

    /// Picks one retired segment to recycle (when enabled, no spare exists, the segment was
    /// rolled full and no reader holds it) and returns its index in `doomed`. The caller (one
    /// retention run at a time) renames it with [`Self::keep_as_spare`], then
    /// [`Self::open_spare`] offers it to the next roll.
    pub(super) fn recyclable(&self, doomed: &mut [Segment<S::File>]) -> Option<usize> {
        let st = self.state.borrow();
        if !self.config.recycle_segments || st.spare.is_some() || st.closed || st.fault.is_some() {
            return None;
        }
        let full = |s: &Segment<S::File>| s.data_bytes >= self.config.segment_bytes_max / 2;
        doomed
            .iter_mut()
            .position(|s| full(s) && !s.held_by_readers())
    }

    /// Renames a retired segment's file to the spare's name (durable with the caller's
    /// directory sync).
    pub(super) async fn keep_as_spare(&self, segment: &Segment<S::File>) -> Result<()> {
        let spare = self.spare_path();
        self.storage
            .rename(&segment.path, &spare)
            .await
            .map_err(|e| EngineError::io("rename", &segment.path, e))
    }

    /// Opens the renamed spare for writing and offers it to the next roll.
    pub(super) async fn open_spare(&self, previous_salt: u32) -> Result<()> {
        let path = self.spare_path();
        let io = |op| {
            let path = path.clone();
            move |e| EngineError::io(op, path, e)
        };
        let file = self
            .storage
            .open(&path, OpenMode::ReadWrite)
            .await
            .map_err(io("open"))?;
        let written_bytes = file.size().await.map_err(io("size"))?;
        self.state.borrow_mut().spare = Some(Spare {
            file: Rc::new(file),
            previous_salt,
            written_bytes,
        });
        self.changed.notify_all();
        Ok(())
    }

    /// Renames a ready spare to the name of the segment at `base_offset`, under a new salt
    /// (the caller syncs the directory). `None` when no spare is ready or no salt could be
    /// drawn (the roll then creates a new file).
    pub(super) async fn take_ready_spare(
        &self,
        base_offset: u64,
    ) -> Result<Option<NextSegment<S::File>>> {
        let Some(Spare {
            file,
            previous_salt,
            written_bytes,
        }) = self.state.borrow_mut().spare.take()
        else {
            return Ok(None);
        };
        let Some(salt) = self.draw_salt(previous_salt) else {
            self.remove_spare().await;
            return Ok(None);
        };
        let path = self.dir.join(segment_file_name(base_offset, salt));
        let from = self.spare_path();
        self.storage
            .rename(&from, &path)
            .await
            .map_err(|e| EngineError::io("rename", &from, e))?;
        self.state.borrow_mut().stats.segments_recycled += 1;
        Ok(Some(NextSegment {
            path,
            file,
            salt,
            allocated_to: align_down(written_bytes),
        }))
    }

    /// A random salt, never 0 (unsalted) and never `previous` (its stale batches would pass).
    fn draw_salt(&self, previous: u32) -> Option<u32> {
        for _ in 0..4 {
            match self.storage.random_u32() {
                Ok(salt) if salt != 0 && salt != previous => return Some(salt),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(partition = %self.id, error = %e, "no random salt: spare dropped");
                    return None;
                }
            }
        }
        None
    }

    /// Best-effort removal of a spare the partition will not use.
    async fn remove_spare(&self) {
        let path = self.spare_path();
        if let Err(e) = self.storage.remove_file(&path).await {
            tracing::warn!(partition = %self.id, error = %e, "cannot remove the spare segment");
        }
    }
}
