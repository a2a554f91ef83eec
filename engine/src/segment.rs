//! Segments: one file per run of offsets, named by base offset, with a sparse in-memory index
//! (offset -> byte position, plus the running maximum timestamp for time lookups).
//!
//! A segment made from a recycled file is salted: its name carries a random, nonzero salt
//! (`<base>.<salt as 8 hex digits>.log`) that seeds the CRC of every batch in it, because the
//! file may still hold an earlier life's bytes past its data (see `partition/spare.rs`).
//! A segment created as a new file is unsalted (`<base>.log`, salt 0): past its data it is zero.
//!
//! A sealed segment's index is persisted next to it (`<base>.index`); the active segment's
//! index travels in the checkpoint. Either is rebuilt from the segment if missing or damaged.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;

use crate::storage::{
    IO_ALIGN_BYTES, IO_REQUEST_BYTES_MAX, IoBuffer, OpenMode, Storage, StorageFile,
};

/// Digits of the zero-padded base offset in a segment file name.
pub(crate) const SEGMENT_NAME_DIGITS: usize = 20;
/// Segment file suffix.
pub(crate) const SEGMENT_SUFFIX: &str = ".log";
/// Index file suffix.
pub(crate) const INDEX_SUFFIX: &str = ".index";
/// Most entries in one index (bounds the index file and the checkpoint).
pub(crate) const INDEX_ENTRIES_MAX: usize = 1 << 20;

const INDEX_MAGIC: u32 = 0x5849_4c53; // "SLIX"
const INDEX_VERSION: u32 = 1;
const INDEX_HEADER_BYTES: usize = 48;
const INDEX_ENTRY_BYTES: usize = 24;

/// Rounds down to the I/O alignment.
pub(crate) fn align_down(v: u64) -> u64 {
    v - v % IO_ALIGN_BYTES as u64
}

/// Rounds up to the I/O alignment.
pub(crate) fn align_up(v: u64) -> u64 {
    align_down(v + IO_ALIGN_BYTES as u64 - 1)
}

/// Hex digits of a salt in a salted segment's file name.
const SALT_NAME_DIGITS: usize = 8;

/// File name of the segment starting at `base_offset` whose batch CRCs are seeded with `salt`.
pub(crate) fn segment_file_name(base_offset: u64, salt: u32) -> String {
    if salt == 0 {
        format!("{base_offset:0SEGMENT_NAME_DIGITS$}{SEGMENT_SUFFIX}")
    } else {
        format!("{base_offset:0SEGMENT_NAME_DIGITS$}.{salt:0SALT_NAME_DIGITS$x}{SEGMENT_SUFFIX}")
    }
}

/// File name of the index of the segment starting at `base_offset`.
pub(crate) fn index_file_name(base_offset: u64) -> String {
    format!("{base_offset:0SEGMENT_NAME_DIGITS$}{INDEX_SUFFIX}")
}

/// Parses a segment file name back to its base offset and salt.
pub(crate) fn parse_segment_name(name: &str) -> Option<(u64, u32)> {
    let stem = name.strip_suffix(SEGMENT_SUFFIX)?;
    let (digits, salt) = match stem.split_once('.') {
        None => (stem, 0),
        Some((digits, hex)) => {
            let lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
            if hex.len() != SALT_NAME_DIGITS || !hex.bytes().all(lower_hex) {
                return None;
            }
            let salt = u32::from_str_radix(hex, 16).ok().filter(|s| *s != 0)?;
            (digits, salt)
        }
    };
    if digits.len() != SEGMENT_NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((digits.parse().ok()?, salt))
}

/// One sparse index entry: the batch starting at `pos` has base offset `offset`; every batch
/// up to and including it has timestamps at most `max_timestamp_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub offset: u64,
    pub pos: u64,
    pub max_timestamp_ms: i64,
}

/// Sparse offset + timestamp index of one segment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SparseIndex {
    pub entries: Vec<IndexEntry>,
}

impl SparseIndex {
    /// Adds an entry for the batch at `pos` if it is `interval_bytes` past the last entry.
    pub(crate) fn maybe_add(&mut self, entry: IndexEntry, interval_bytes: u32) {
        let due = match self.entries.last() {
            None => true,
            Some(last) => {
                assert!(
                    entry.pos > last.pos && entry.offset > last.offset,
                    "index out of order"
                );
                entry.pos - last.pos >= u64::from(interval_bytes)
            }
        };
        if due && self.entries.len() < INDEX_ENTRIES_MAX {
            self.entries.push(entry);
        }
    }

    /// Byte position and base offset of the last indexed batch starting at or before `offset`.
    pub(crate) fn lookup(&self, offset: u64) -> Option<IndexEntry> {
        let i = self.entries.partition_point(|e| e.offset <= offset);
        i.checked_sub(1).map(|i| self.entries[i])
    }

    /// Byte position from which to scan for the first batch with a timestamp >= `ts_ms`.
    pub(crate) fn lookup_time(&self, ts_ms: i64) -> u64 {
        let i = self.entries.partition_point(|e| e.max_timestamp_ms < ts_ms);
        i.checked_sub(1).map_or(0, |i| self.entries[i].pos)
    }

    /// Drops entries at or past byte `pos`.
    pub(crate) fn truncate_at(&mut self, pos: u64) {
        self.entries.retain(|e| e.pos < pos);
    }
}

/// The persisted form of a segment's index and extent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IndexImage {
    pub base_offset: u64,
    pub next_offset: u64,
    pub data_bytes: u64,
    pub max_timestamp_ms: i64,
    pub index: SparseIndex,
}

impl IndexImage {
    /// Encodes (magic, version, crc over the rest, header fields, entries).
    pub(crate) fn encode(&self) -> Vec<u8> {
        let n = self.index.entries.len();
        let mut out = Vec::with_capacity(INDEX_HEADER_BYTES + n * INDEX_ENTRY_BYTES);
        out.extend_from_slice(&INDEX_MAGIC.to_le_bytes());
        out.extend_from_slice(&INDEX_VERSION.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(n as u32).to_le_bytes());
        out.extend_from_slice(&self.base_offset.to_le_bytes());
        out.extend_from_slice(&self.next_offset.to_le_bytes());
        out.extend_from_slice(&self.data_bytes.to_le_bytes());
        out.extend_from_slice(&self.max_timestamp_ms.to_le_bytes());
        for e in &self.index.entries {
            out.extend_from_slice(&e.offset.to_le_bytes());
            out.extend_from_slice(&e.pos.to_le_bytes());
            out.extend_from_slice(&e.max_timestamp_ms.to_le_bytes());
        }
        let crc = crc32fast::hash(&out[12..]);
        out[8..12].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes and validates (bounds, CRC, ordering); `None` if damaged.
    pub(crate) fn decode(bytes: &[u8]) -> Option<IndexImage> {
        let u32_at = |at: usize| {
            bytes
                .get(at..at + 4)
                .map(|b| u32::from_le_bytes(b.try_into().unwrap_or([0; 4])))
        };
        let u64_at = |at: usize| {
            bytes
                .get(at..at + 8)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
        };
        if u32_at(0)? != INDEX_MAGIC || u32_at(4)? != INDEX_VERSION {
            return None;
        }
        let n = u32_at(12)? as usize;
        if n > INDEX_ENTRIES_MAX {
            return None;
        }
        let len = INDEX_HEADER_BYTES + n * INDEX_ENTRY_BYTES;
        if bytes.len() < len || crc32fast::hash(&bytes[12..len]) != u32_at(8)? {
            return None;
        }
        let mut index = SparseIndex::default();
        for i in 0..n {
            let at = INDEX_HEADER_BYTES + i * INDEX_ENTRY_BYTES;
            let entry = IndexEntry {
                offset: u64_at(at)?,
                pos: u64_at(at + 8)?,
                max_timestamp_ms: u64_at(at + 16)? as i64,
            };
            if index
                .entries
                .last()
                .is_some_and(|l| l.pos >= entry.pos || l.offset >= entry.offset)
            {
                return None;
            }
            index.entries.push(entry);
        }
        let image = IndexImage {
            base_offset: u64_at(16)?,
            next_offset: u64_at(24)?,
            data_bytes: u64_at(32)?,
            max_timestamp_ms: u64_at(40)? as i64,
            index,
        };
        let entries_in_range = image.index.entries.iter().all(|e| {
            e.pos < image.data_bytes
                && e.offset >= image.base_offset
                && e.offset < image.next_offset
        });
        (image.next_offset >= image.base_offset && entries_in_range).then_some(image)
    }
}

/// One segment of a partition. The last segment of a partition is the active one.
#[derive(Debug)]
pub(crate) struct Segment<F> {
    pub base_offset: u64,
    /// Seed of every batch CRC in this segment; nonzero only for a recycled file.
    pub salt: u32,
    pub path: PathBuf,
    pub file: Rc<F>,
    /// End of the batches written into this segment (unsynced included for the active one).
    pub data_bytes: u64,
    /// Offset after the last batch written into this segment.
    pub next_offset: u64,
    /// Largest record timestamp (i64::MIN when empty).
    pub max_timestamp_ms: i64,
    /// When the segment was created (for age-based rolling).
    pub created_ms: i64,
    pub index: SparseIndex,
    /// Memory map of a sealed segment, made on first read (see [`Segment::counted_map`]).
    pub mapped: Option<Bytes>,
    /// One clone per live map of this segment handed to readers, plus this one.
    pub map_readers: Arc<()>,
    pub sealed: bool,
}

/// A segment's memory map as readers get it: every `Bytes` cut from it keeps `_readers`
/// alive, so retention can tell whether a reader may still hold bytes of a retired file
/// before it overwrites the file for reuse.
struct CountedMap {
    map: Bytes,
    _readers: Arc<()>,
}

impl AsRef<[u8]> for CountedMap {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

impl<F: StorageFile> Segment<F> {
    /// Wraps a fresh map of this segment so the bytes readers take from it are counted.
    pub(crate) fn counted_map(&self, map: Bytes) -> Bytes {
        Bytes::from_owner(CountedMap {
            map,
            _readers: self.map_readers.clone(),
        })
    }

    /// Drops this segment's own map; then whether a reader may still hold bytes of the file
    /// (a map cut from it, or its file handle). Only a segment held by nobody is recycled.
    pub(crate) fn held_by_readers(&mut self) -> bool {
        self.mapped = None;
        Arc::strong_count(&self.map_readers) > 1 || Rc::strong_count(&self.file) > 1
    }

    /// The persisted index image of the first `data_bytes` bytes.
    pub(crate) fn index_image(&self, data_bytes: u64, next_offset: u64) -> IndexImage {
        let mut index = self.index.clone();
        index.truncate_at(data_bytes);
        IndexImage {
            base_offset: self.base_offset,
            next_offset,
            data_bytes,
            max_timestamp_ms: self.max_timestamp_ms,
            index,
        }
    }
}

/// Writes `data` from byte 0 of `file`, zero padded to the alignment, in requests of at most
/// [`IO_REQUEST_BYTES_MAX`], then fdatasyncs.
pub(crate) async fn write_whole_file<F: StorageFile>(file: &F, data: &[u8]) -> std::io::Result<()> {
    let mut pos = 0usize;
    while pos < data.len() {
        let n = (data.len() - pos).min(IO_REQUEST_BYTES_MAX);
        let padded = align_up(n as u64) as usize;
        let mut buf = file.alloc_buffer(padded);
        let bytes = buf.as_bytes_mut();
        bytes[..n].copy_from_slice(&data[pos..pos + n]);
        bytes[n..].fill(0);
        file.write_at(Rc::new(buf), pos as u64).await?;
        pos += n;
    }
    file.fdatasync().await
}

/// Reads a whole (small) file.
pub(crate) async fn read_whole_file<S: Storage>(
    storage: &S,
    path: &Path,
) -> std::io::Result<Bytes> {
    let file = storage.open(path, OpenMode::ReadOnly).await?;
    let size = file.size().await?;
    file.read_at(0, size as usize).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(segment_file_name(42, 0), "00000000000000000042.log");
        assert_eq!(
            parse_segment_name("00000000000000000042.log"),
            Some((42, 0))
        );
        assert_eq!(
            segment_file_name(42, 0x0bad_cafe),
            "00000000000000000042.0badcafe.log"
        );
        assert_eq!(
            parse_segment_name("00000000000000000042.0badcafe.log"),
            Some((42, 0x0bad_cafe))
        );
        assert_eq!(parse_segment_name("0000000000000000042.log"), None);
        assert_eq!(parse_segment_name("0000000000000000004x.log"), None);
        assert_eq!(parse_segment_name("00000000000000000042.index"), None);
        // A salt is 8 lowercase hex digits and never 0 (0 is spelled without one).
        for bad in ["0badcaf", "0BADCAFE", "00000000", "0badcafe0", "+badcafe"] {
            let name = format!("00000000000000000042.{bad}.log");
            assert_eq!(parse_segment_name(&name), None, "{name}");
        }
    }

    #[test]
    fn index_lookup_and_image() {
        let mut index = SparseIndex::default();
        for i in 0..10u64 {
            index.maybe_add(
                IndexEntry {
                    offset: 100 + i * 10,
                    pos: i * 1000,
                    max_timestamp_ms: i as i64 * 5,
                },
                2000,
            );
        }
        assert_eq!(index.entries.len(), 5);
        assert_eq!(index.lookup(99), None);
        assert_eq!(index.lookup(100).map(|e| e.pos), Some(0));
        assert_eq!(index.lookup(139).map(|e| e.pos), Some(2000));
        assert_eq!(index.lookup(1000).map(|e| e.pos), Some(8000));
        assert_eq!(index.lookup_time(0), 0);
        assert_eq!(index.lookup_time(21), 4000);
        let image = IndexImage {
            base_offset: 100,
            next_offset: 200,
            data_bytes: 9000,
            max_timestamp_ms: 45,
            index,
        };
        let bytes = image.encode();
        assert_eq!(IndexImage::decode(&bytes), Some(image.clone()));
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            assert_ne!(IndexImage::decode(&b), Some(image.clone()), "flip at {i}");
        }
        assert_eq!(IndexImage::decode(&bytes[..bytes.len() - 1]), None);
    }
}
