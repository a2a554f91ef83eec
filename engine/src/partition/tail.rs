//! The active segment's unsynced tail: aligned write buffers ("chunks") that appends encode
//! into directly, and that a sync round hands to the device without copying.
//!
//! Each chunk maps to a 4 KiB-aligned file position. A chunk that starts inside a page carries
//! a copy of that page's earlier bytes, so every write is page aligned and the partial last
//! page is rewritten by the next round. A chunk is written at most once.

use std::rc::Rc;

use crate::segment::{align_down, align_up};
use crate::storage::{IO_REQUEST_BYTES_MAX, IoBuffer, StorageFile};

/// Default capacity of a tail chunk (larger batches get a chunk of their own size).
pub(crate) const TAIL_CHUNK_BYTES: usize = 64 * 1024;

/// One write buffer.
#[derive(Debug)]
pub(crate) struct Chunk<B> {
    /// File position of `buf[0]` (aligned).
    pub file_pos: u64,
    pub buf: B,
    /// Bytes of `buf` holding data.
    pub len: usize,
    /// Bytes to write once sealed (whole pages; the partial page moved to the next chunk).
    pub write_len: usize,
}

/// The unsynced tail of the active segment.
#[derive(Debug)]
pub(crate) struct Tail<B> {
    /// Chunks closed because a batch did not fit; written by the next round, in order.
    pub sealed: Vec<Chunk<B>>,
    /// The chunk appends encode into.
    pub current: Chunk<B>,
}

/// A set of aligned writes that together make `[.., end_pos)` durable after an fdatasync.
pub(crate) struct Round<B> {
    pub writes: Vec<(u64, Rc<B>)>,
    pub end_pos: u64,
}

fn new_chunk<F: StorageFile>(
    file: &F,
    file_pos: u64,
    carried: &[u8],
    need: usize,
) -> Chunk<F::Buffer> {
    assert!(file_pos % crate::storage::IO_ALIGN_BYTES as u64 == 0);
    let capacity = align_up(TAIL_CHUNK_BYTES.max(carried.len() + need) as u64) as usize;
    assert!(
        capacity <= IO_REQUEST_BYTES_MAX,
        "chunk of {capacity} bytes exceeds one DMA request"
    );
    let mut buf = file.alloc_buffer(capacity);
    buf.as_bytes_mut()[..carried.len()].copy_from_slice(carried);
    Chunk {
        file_pos,
        buf,
        len: carried.len(),
        write_len: 0,
    }
}

impl<B: IoBuffer> Tail<B> {
    /// A tail whose data ends at `end_pos`; `page` holds the file's bytes from
    /// `align_down(end_pos)` to `end_pos`.
    pub(crate) fn new<F: StorageFile<Buffer = B>>(file: &F, end_pos: u64, page: &[u8]) -> Self {
        let file_pos = align_down(end_pos);
        assert_eq!(file_pos + page.len() as u64, end_pos);
        Tail {
            sealed: Vec::new(),
            current: new_chunk(file, file_pos, page, 0),
        }
    }

    /// File position after the last byte appended.
    pub(crate) fn written_pos(&self) -> u64 {
        self.current.file_pos + self.current.len as u64
    }

    /// Room for `need` more bytes in the current chunk (sealing it if it is too small);
    /// returns the slice to encode into and its file position.
    pub(crate) fn reserve<F: StorageFile<Buffer = B>>(
        &mut self,
        file: &F,
        need: usize,
    ) -> (&mut [u8], u64) {
        if self.current.len + need > self.current.buf.as_bytes().len() {
            let carry_from = align_down(self.current.len as u64) as usize;
            let next_pos = self.current.file_pos + carry_from as u64;
            let next = new_chunk(
                file,
                next_pos,
                &self.current.buf.as_bytes()[carry_from..self.current.len],
                need,
            );
            let mut sealed = std::mem::replace(&mut self.current, next);
            sealed.write_len = carry_from;
            if sealed.write_len > 0 {
                self.sealed.push(sealed);
            }
        }
        let pos = self.written_pos();
        let start = self.current.len;
        (
            &mut self.current.buf.as_bytes_mut()[start..start + need],
            pos,
        )
    }

    /// Marks `n` reserved bytes as written.
    pub(crate) fn commit(&mut self, n: usize) {
        assert!(self.current.len + n <= self.current.buf.as_bytes().len());
        self.current.len += n;
    }

    /// Takes everything past `durable_pos` as one round of writes; `None` if nothing is new.
    pub(crate) fn take_round<F: StorageFile<Buffer = B>>(
        &mut self,
        file: &F,
        durable_pos: u64,
    ) -> Option<Round<B>> {
        let end_pos = self.written_pos();
        if end_pos == durable_pos && self.sealed.is_empty() {
            return None;
        }
        assert!(end_pos > durable_pos, "tail behind the durable point");
        let mut writes = Vec::with_capacity(self.sealed.len() + 1);
        for mut chunk in self.sealed.drain(..) {
            chunk.buf.trim_to_size(chunk.write_len);
            writes.push((chunk.file_pos, Rc::new(chunk.buf)));
        }
        let len = self.current.len;
        let carry_from = align_down(len as u64) as usize;
        let next_pos = self.current.file_pos + carry_from as u64;
        let next = new_chunk(
            file,
            next_pos,
            &self.current.buf.as_bytes()[carry_from..len],
            0,
        );
        let mut chunk = std::mem::replace(&mut self.current, next);
        let padded = align_up(len as u64) as usize;
        chunk.buf.as_bytes_mut()[len..padded].fill(0);
        chunk.buf.trim_to_size(padded);
        writes.push((chunk.file_pos, Rc::new(chunk.buf)));
        for pair in writes.windows(2) {
            let first_end = pair[0].0 + pair[0].1.as_bytes().len() as u64;
            assert!(first_end <= pair[1].0, "overlapping writes in one round");
        }
        Some(Round { writes, end_pos })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{IO_ALIGN_BYTES, OpenMode, SimConfig, SimStorage, Storage};

    fn file() -> <SimStorage as Storage>::File {
        let sim = SimStorage::new(SimConfig::default());
        futures_lite::future::block_on(async {
            sim.create_dir_all(std::path::Path::new("/d"))
                .await
                .unwrap();
            sim.open(std::path::Path::new("/d/f"), OpenMode::CreateTruncate)
                .await
                .unwrap()
        })
    }

    fn append(
        tail: &mut Tail<<<SimStorage as Storage>::File as StorageFile>::Buffer>,
        f: &<SimStorage as Storage>::File,
        n: usize,
        byte: u8,
    ) {
        let (out, _) = tail.reserve(f, n);
        out.fill(byte);
        tail.commit(n);
    }

    #[test]
    fn rounds_are_aligned_ordered_and_carry_the_partial_page() {
        let f = file();
        let mut tail = Tail::new(&f, 0, &[]);
        let mut image = Vec::new();
        let mut durable = 0u64;
        for (i, n) in [100usize, 5000, 70_000, 3, 200_000, 4096, 1]
            .into_iter()
            .enumerate()
        {
            append(&mut tail, &f, n, i as u8 + 1);
            image.extend(std::iter::repeat_n(i as u8 + 1, n));
            if i % 2 == 1 {
                continue; // let chunks accumulate across appends
            }
            let round = tail.take_round(&f, durable).expect("new data");
            let mut disk = vec![0u8; align_up(image.len() as u64) as usize];
            for (pos, buf) in &round.writes {
                assert_eq!(pos % IO_ALIGN_BYTES as u64, 0);
                assert_eq!(buf.as_bytes().len() % IO_ALIGN_BYTES, 0);
                let at = *pos as usize;
                disk[at..at + buf.as_bytes().len()].copy_from_slice(buf.as_bytes());
            }
            let first = round.writes[0].0 as usize;
            assert!(first <= durable as usize);
            assert_eq!(
                &disk[first..image.len()],
                &image[first..],
                "round {i} writes the bytes appended"
            );
            assert_eq!(round.end_pos, image.len() as u64);
            durable = round.end_pos;
            assert!(tail.take_round(&f, durable).is_none());
        }
    }
}
