//! The partition checkpoint: where the durable log ended when it was written, plus the state
//! that would otherwise need a full log scan (active segment index, producer table).
//! Recovery scans only past it. Written as temp file, fdatasync, rename, directory fsync.
//!
//! ```text
//!  0 u32 magic "SLCP"     4 u32 version 1      8 u32 crc32 over [16, total)  12 u32 total bytes
//! 16 u64 segment_base    24 u64 durable_pos   32 u64 durable_offset         40 i64 segment_created_ms
//! 48 u32 producer_count  52 u32 index_image_bytes
//! 56 producers: (u64 id, u32 n, n x (u64 sequence, u32 record_count, u64 base_offset))
//!    index image of the active segment (see segment.rs), index_image_bytes long
//! ```

use crate::producer::{PRODUCER_BATCHES_MAX, PRODUCERS_MAX, ProducerBatch};
use crate::segment::IndexImage;

/// Checkpoint file name.
pub(crate) const CHECKPOINT_FILE: &str = "checkpoint";
/// Temporary name while a checkpoint is written.
pub(crate) const CHECKPOINT_TMP_FILE: &str = "checkpoint.tmp";

const MAGIC: u32 = 0x5043_4c53; // "SLCP"
const VERSION: u32 = 1;
const HEADER_BYTES: usize = 56;

/// Decoded checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    pub segment_base: u64,
    pub durable_pos: u64,
    pub durable_offset: u64,
    pub segment_created_ms: i64,
    pub producers: Vec<(u64, Vec<ProducerBatch>)>,
    pub active_index: IndexImage,
}

impl Checkpoint {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&[0u8; 8]); // crc and total, filled below
        out.extend_from_slice(&self.segment_base.to_le_bytes());
        out.extend_from_slice(&self.durable_pos.to_le_bytes());
        out.extend_from_slice(&self.durable_offset.to_le_bytes());
        out.extend_from_slice(&self.segment_created_ms.to_le_bytes());
        out.extend_from_slice(&(self.producers.len() as u32).to_le_bytes());
        let index = self.active_index.encode();
        out.extend_from_slice(&(index.len() as u32).to_le_bytes());
        for (id, batches) in &self.producers {
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&(batches.len() as u32).to_le_bytes());
            for b in batches {
                out.extend_from_slice(&b.sequence.to_le_bytes());
                out.extend_from_slice(&b.record_count.to_le_bytes());
                out.extend_from_slice(&b.base_offset.to_le_bytes());
            }
        }
        out.extend_from_slice(&index);
        let total = out.len() as u32;
        out[12..16].copy_from_slice(&total.to_le_bytes());
        let crc = crc32fast::hash(&out[16..]);
        out[8..12].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes and validates; `None` if damaged (recovery then scans the active segment).
    pub(crate) fn decode(bytes: &[u8]) -> Option<Checkpoint> {
        let mut r = Cursor { bytes, pos: 0 };
        if r.u32()? != MAGIC || r.u32()? != VERSION {
            return None;
        }
        let crc = r.u32()?;
        let total = r.u32()? as usize;
        if total < HEADER_BYTES || total > bytes.len() || crc32fast::hash(&bytes[16..total]) != crc
        {
            return None;
        }
        let mut r = Cursor {
            bytes: &bytes[..total],
            pos: 16,
        };
        let segment_base = r.u64()?;
        let durable_pos = r.u64()?;
        let durable_offset = r.u64()?;
        let segment_created_ms = r.u64()? as i64;
        let producer_count = r.u32()? as usize;
        let index_bytes = r.u32()? as usize;
        if producer_count > PRODUCERS_MAX {
            return None;
        }
        let mut producers = Vec::with_capacity(producer_count);
        for _ in 0..producer_count {
            let id = r.u64()?;
            let n = r.u32()? as usize;
            if n > PRODUCER_BATCHES_MAX {
                return None;
            }
            let mut batches = Vec::with_capacity(n);
            for _ in 0..n {
                batches.push(ProducerBatch {
                    sequence: r.u64()?,
                    record_count: r.u32()?,
                    base_offset: r.u64()?,
                });
            }
            producers.push((id, batches));
        }
        let index = bytes.get(r.pos..r.pos.checked_add(index_bytes)?)?;
        let active_index = IndexImage::decode(index)?;
        let consistent = active_index.base_offset == segment_base
            && active_index.data_bytes == durable_pos
            && active_index.next_offset == durable_offset;
        consistent.then_some(Checkpoint {
            segment_base,
            durable_pos,
            durable_offset,
            segment_created_ms,
            producers,
            active_index,
        })
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let slice = self.bytes.get(self.pos..self.pos.checked_add(N)?)?;
        self.pos += N;
        slice.try_into().ok()
    }
    fn u32(&mut self) -> Option<u32> {
        self.take::<4>().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take::<8>().map(u64::from_le_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::{IndexEntry, SparseIndex};

    #[test]
    fn round_trip_and_damage() {
        let cp = Checkpoint {
            segment_base: 10,
            durable_pos: 5000,
            durable_offset: 30,
            segment_created_ms: 77,
            producers: vec![(
                3,
                vec![ProducerBatch {
                    sequence: 4,
                    record_count: 2,
                    base_offset: 12,
                }],
            )],
            active_index: IndexImage {
                base_offset: 10,
                next_offset: 30,
                data_bytes: 5000,
                max_timestamp_ms: 9,
                index: SparseIndex {
                    entries: vec![IndexEntry {
                        offset: 10,
                        pos: 0,
                        max_timestamp_ms: 1,
                    }],
                },
            },
        };
        let mut bytes = cp.encode();
        assert_eq!(Checkpoint::decode(&bytes), Some(cp.clone()));
        bytes.extend_from_slice(&[0; 100]); // zero padding from the aligned write
        assert_eq!(Checkpoint::decode(&bytes), Some(cp));
        for i in 0..bytes.len() - 100 {
            let mut b = bytes.clone();
            b[i] ^= 1;
            assert!(Checkpoint::decode(&b).is_none(), "flip at {i}");
        }
    }
}
