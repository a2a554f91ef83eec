//! Record batch codec: the on-disk and parity byte format of one batch.
//!
//! Encoding writes straight into a caller-provided slice (the segment's write buffer), so a
//! record is copied once on its way to disk. Decoding is zero-copy: keys, values and headers
//! are `Bytes` slices of the input. No length field is trusted before it is bounds-checked.
//! The layout is specified in `docs/format.md`; all integers are little endian.
//!
//! ```text
//! batch header (56 bytes)
//!  0 u32 batch_bytes        whole batch, header included
//!  4 u32 crc32              CRC32 (IEEE) over bytes [8, batch_bytes), seeded with the
//!                           segment's salt (0: the plain CRC32; see `docs/format.md`)
//!  8 u16 magic  0x4c53      "SL"
//! 10 u8  version 1
//! 11 u8  flags              bit 0: producer id/sequence present
//! 12 u32 record_count       >= 1
//! 16 u64 base_offset
//! 24 i64 first_timestamp_ms
//! 32 i64 max_timestamp_ms
//! 40 u64 producer_id        0 when flag bit 0 is clear
//! 48 u64 producer_sequence  sequence of the first record; 0 when flag bit 0 is clear
//! record (repeated record_count times)
//!  u32 record_bytes         bytes after this field
//!  i64 timestamp_ms
//!  i32 key_bytes            -1: no key
//!  key
//!  u32 value_bytes
//!  value
//!  u32 header_count
//!  (u32 key_bytes, key, u32 value_bytes, value) x header_count
//! ```

use bytes::Bytes;

use crate::types::{Header, ProducerSeq, Record};

/// Bytes in a batch header.
pub const BATCH_HEADER_BYTES: usize = 56;
/// Largest encoded batch: one batch plus a carried partial page must fit in one 4 MiB DMA request.
pub const BATCH_BYTES_MAX: usize = 4 * 1024 * 1024 - 2 * 4096;
/// Most records in one batch.
pub const BATCH_RECORDS_MAX: usize = 1_000_000;
/// Most headers on one record.
pub const RECORD_HEADERS_MAX: usize = 1024;
/// Magic number at byte 8 of every batch ("SL").
pub const BATCH_MAGIC: u16 = 0x4c53;
/// Current batch format version.
pub const BATCH_VERSION: u8 = 1;
/// Flag: the batch carries a producer id and sequence.
pub const FLAG_PRODUCER: u8 = 1;
/// Bytes of a record's fixed fields (record_bytes, timestamp, key length, value length, header count).
pub const RECORD_FIXED_BYTES: usize = 4 + 8 + 4 + 4 + 4;
/// Bytes of a header's fixed fields (key length, value length).
pub const HEADER_FIXED_BYTES: usize = 8;

const _: () = assert!(BATCH_HEADER_BYTES % 8 == 0);
const _: () = assert!(BATCH_BYTES_MAX + 4096 <= 4 * 1024 * 1024);
// A key length always decodes as a non-negative i32, never as the "no key" marker (-1).
const _: () = assert!(BATCH_BYTES_MAX < i32::MAX as usize);

/// Why bytes are not a valid batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Fewer bytes than a header, or than the header's length field claims.
    #[error("truncated: need {needed} bytes, have {available}")]
    Truncated {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// The length field is zero (unwritten, zero-filled space).
    #[error("zero length field")]
    Zero,
    /// The length field is outside `[BATCH_HEADER_BYTES, BATCH_BYTES_MAX]`.
    #[error("batch length {0} out of range")]
    BadLength(u32),
    /// Wrong magic number or unknown version.
    #[error("bad magic {magic:#06x} or version {version}")]
    BadMagic {
        /// Magic found.
        magic: u16,
        /// Version found.
        version: u8,
    },
    /// The CRC does not match the contents.
    #[error("crc mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadCrc {
        /// CRC stored in the header.
        stored: u32,
        /// CRC computed over the bytes.
        computed: u32,
    },
    /// The records do not parse or do not fill the batch exactly.
    #[error("malformed records: {0}")]
    BadRecords(&'static str),
}

/// The batch checksum: CRC32 (IEEE, `crc32fast`) of `bytes`, with `salt` as its initial value.
///
/// A segment's salt is private to the server (never sent to clients), so a client cannot
/// write bytes that pass as a batch of a salted segment; salt 0 is the plain CRC32.
pub fn crc32(salt: u32, bytes: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new_with_initial(salt);
    hasher.update(bytes);
    hasher.finalize()
}

/// Encoded size of one record.
pub fn record_encoded_bytes(record: &Record) -> usize {
    record_parts_encoded_bytes(record.key.as_ref(), &record.value, &record.headers)
}

/// Encoded size of a record with these parts: its fixed fields, key, value and headers with
/// their own fixed fields (what it occupies in a batch).
pub fn record_parts_encoded_bytes(key: Option<&Bytes>, value: &Bytes, headers: &[Header]) -> usize {
    let key = key.map_or(0, |k| k.len());
    let headers: usize = headers
        .iter()
        .map(|h| HEADER_FIXED_BYTES + h.key.len() + h.value.len())
        .sum();
    RECORD_FIXED_BYTES + key + value.len() + headers
}

/// The first record of `records` with more than [`RECORD_HEADERS_MAX`] headers, as (index,
/// header count). The decoder refuses such a record, so the encoder must never write one.
pub fn record_over_headers_max(records: &[Record]) -> Option<(usize, usize)> {
    records
        .iter()
        .enumerate()
        .find(|(_, record)| record.headers.len() > RECORD_HEADERS_MAX)
        .map(|(index, record)| (index, record.headers.len()))
}

/// Encoded size of a batch holding `records`.
pub fn batch_encoded_bytes(records: &[Record]) -> usize {
    BATCH_HEADER_BYTES + records.iter().map(record_encoded_bytes).sum::<usize>()
}

struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        self.buf[self.pos..self.pos + bytes.len()].copy_from_slice(bytes);
        self.pos += bytes.len();
    }
    fn u32(&mut self, v: u32) {
        self.put(&v.to_le_bytes());
    }
    fn len_u32(&mut self, len: usize) {
        // Lengths are bounded by BATCH_BYTES_MAX, checked before encoding starts.
        self.u32(u32::try_from(len).unwrap_or(u32::MAX));
    }
}

/// Encodes a batch into `out[..batch_encoded_bytes(records)]`, its CRC seeded with `salt`, and
/// returns the bytes written.
///
/// Preconditions (asserted): `records` is not empty, no record has more than
/// [`RECORD_HEADERS_MAX`] headers, and `out` is at least `batch_encoded_bytes(records)` long and
/// that is at most [`BATCH_BYTES_MAX`]: every limit the decoder enforces, so what is encoded
/// always decodes. Callers validate the batch first (the partition does, returning typed errors).
pub fn encode_batch_into(
    out: &mut [u8],
    salt: u32,
    base_offset: u64,
    producer: Option<ProducerSeq>,
    records: &[Record],
) -> usize {
    let batch_bytes = batch_encoded_bytes(records);
    assert!(!records.is_empty() && records.len() <= BATCH_RECORDS_MAX);
    assert!(batch_bytes <= BATCH_BYTES_MAX && out.len() >= batch_bytes);
    assert!(record_over_headers_max(records).is_none());
    let first_ts = records[0].timestamp_ms;
    let max_ts = records
        .iter()
        .map(|r| r.timestamp_ms)
        .max()
        .unwrap_or(first_ts);
    let (flags, pid, seq) = match producer {
        Some(p) => (FLAG_PRODUCER, p.producer_id, p.sequence),
        None => (0, 0, 0),
    };
    let mut w = Writer {
        buf: &mut out[..batch_bytes],
        pos: 0,
    };
    w.len_u32(batch_bytes);
    w.u32(0); // crc, filled below
    w.put(&BATCH_MAGIC.to_le_bytes());
    w.put(&[BATCH_VERSION, flags]);
    w.len_u32(records.len());
    w.put(&base_offset.to_le_bytes());
    w.put(&first_ts.to_le_bytes());
    w.put(&max_ts.to_le_bytes());
    w.put(&pid.to_le_bytes());
    w.put(&seq.to_le_bytes());
    debug_assert_eq!(w.pos, BATCH_HEADER_BYTES);
    for record in records {
        encode_record(&mut w, record);
    }
    assert_eq!(w.pos, batch_bytes);
    let crc = crc32(salt, &w.buf[8..batch_bytes]);
    w.buf[4..8].copy_from_slice(&crc.to_le_bytes());
    batch_bytes
}

fn encode_record(w: &mut Writer<'_>, record: &Record) {
    w.len_u32(record_encoded_bytes(record) - 4);
    w.put(&record.timestamp_ms.to_le_bytes());
    match &record.key {
        Some(key) => {
            w.len_u32(key.len());
            w.put(key);
        }
        None => w.put(&(-1i32).to_le_bytes()),
    }
    w.len_u32(record.value.len());
    w.put(&record.value);
    w.len_u32(record.headers.len());
    for header in &record.headers {
        w.len_u32(header.key.len());
        w.put(&header.key);
        w.len_u32(header.value.len());
        w.put(&header.value);
    }
}

/// Encodes an unsalted batch into a new `Bytes` (convenience for tests, parity checks and
/// benches).
pub fn encode_batch(base_offset: u64, producer: Option<ProducerSeq>, records: &[Record]) -> Bytes {
    encode_salted_batch(0, base_offset, producer, records)
}

/// Encodes a batch with its CRC seeded with `salt` into a new `Bytes`.
pub fn encode_salted_batch(
    salt: u32,
    base_offset: u64,
    producer: Option<ProducerSeq>,
    records: &[Record],
) -> Bytes {
    let mut out = vec![0u8; batch_encoded_bytes(records)];
    encode_batch_into(&mut out, salt, base_offset, producer, records);
    Bytes::from(out)
}

/// The fixed header of a batch, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Whole batch length in bytes.
    pub batch_bytes: u32,
    /// Stored CRC.
    pub crc: u32,
    /// Flags byte.
    pub flags: u8,
    /// Records in the batch.
    pub record_count: u32,
    /// Offset of the first record.
    pub base_offset: u64,
    /// Timestamp of the first record.
    pub first_timestamp_ms: i64,
    /// Largest record timestamp.
    pub max_timestamp_ms: i64,
    /// Producer id and first sequence, when the batch is idempotent.
    pub producer: Option<ProducerSeq>,
}

impl BatchHeader {
    /// Offset after the last record of the batch.
    pub fn next_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count)
    }
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Decodes and range-checks a header from the start of `bytes` (no CRC check).
pub fn decode_header(bytes: &[u8]) -> Result<BatchHeader, FormatError> {
    if bytes.len() < 4 {
        return Err(FormatError::Truncated {
            needed: 4,
            available: bytes.len(),
        });
    }
    let batch_bytes = le_u32(bytes, 0);
    if batch_bytes == 0 {
        return Err(FormatError::Zero);
    }
    if (batch_bytes as usize) < BATCH_HEADER_BYTES || batch_bytes as usize > BATCH_BYTES_MAX {
        return Err(FormatError::BadLength(batch_bytes));
    }
    if bytes.len() < BATCH_HEADER_BYTES {
        return Err(FormatError::Truncated {
            needed: BATCH_HEADER_BYTES,
            available: bytes.len(),
        });
    }
    let magic = u16::from_le_bytes([bytes[8], bytes[9]]);
    let version = bytes[10];
    if magic != BATCH_MAGIC || version != BATCH_VERSION {
        return Err(FormatError::BadMagic { magic, version });
    }
    let flags = bytes[11];
    let record_count = le_u32(bytes, 12);
    if record_count == 0 || record_count as usize > BATCH_RECORDS_MAX {
        return Err(FormatError::BadRecords("record count out of range"));
    }
    let producer = (flags & FLAG_PRODUCER != 0).then(|| ProducerSeq {
        producer_id: le_u64(bytes, 40),
        sequence: le_u64(bytes, 48),
    });
    Ok(BatchHeader {
        batch_bytes,
        crc: le_u32(bytes, 4),
        flags,
        record_count,
        base_offset: le_u64(bytes, 16),
        first_timestamp_ms: le_u64(bytes, 24) as i64,
        max_timestamp_ms: le_u64(bytes, 32) as i64,
        producer,
    })
}

/// Checks the header and the CRC (seeded with `salt`) of the batch at the start of `bytes`;
/// returns the header.
pub fn check_batch(bytes: &[u8], salt: u32) -> Result<BatchHeader, FormatError> {
    let header = decode_header(bytes)?;
    let len = header.batch_bytes as usize;
    if bytes.len() < len {
        return Err(FormatError::Truncated {
            needed: len,
            available: bytes.len(),
        });
    }
    let computed = crc32(salt, &bytes[8..len]);
    if computed != header.crc {
        return Err(FormatError::BadCrc {
            stored: header.crc,
            computed,
        });
    }
    Ok(header)
}

/// A verified batch: header plus the batch bytes, records decoded lazily and zero-copy.
#[derive(Debug, Clone)]
pub struct BatchView {
    header: BatchHeader,
    bytes: Bytes,
}

impl BatchView {
    /// Verifies the unsalted batch at the start of `bytes`; see [`Self::parse_salted`].
    pub fn parse(bytes: &Bytes) -> Result<BatchView, FormatError> {
        Self::parse_salted(bytes, 0)
    }

    /// Verifies the batch at the start of `bytes` (header, CRC seeded with `salt`, record
    /// structure) and keeps a zero-copy slice of exactly its bytes. Cost: one CRC pass and one
    /// walk over the records.
    pub fn parse_salted(bytes: &Bytes, salt: u32) -> Result<BatchView, FormatError> {
        let header = check_batch(bytes, salt)?;
        let view = BatchView {
            header,
            bytes: bytes.slice(..header.batch_bytes as usize),
        };
        let mut count = 0u32;
        for record in view.records() {
            record?;
            count += 1;
        }
        if count != header.record_count {
            return Err(FormatError::BadRecords("record count mismatch"));
        }
        Ok(view)
    }

    /// The decoded header.
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// The whole encoded batch.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Iterates the records; each item is bounds-checked.
    pub fn records(&self) -> RecordIter {
        RecordIter {
            bytes: self.bytes.clone(),
            pos: BATCH_HEADER_BYTES,
            remaining: self.header.record_count,
            offset: self.header.base_offset,
        }
    }
}

/// A record decoded from a batch, sharing the batch's memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordView {
    /// Offset of this record.
    pub offset: u64,
    /// Record timestamp.
    pub timestamp_ms: i64,
    /// Key, if any.
    pub key: Option<Bytes>,
    /// Value.
    pub value: Bytes,
    /// Headers.
    pub headers: Vec<Header>,
}

/// Iterator over the records of a [`BatchView`]; yields an error (then stops) on malformed input.
#[derive(Debug)]
pub struct RecordIter {
    bytes: Bytes,
    pos: usize,
    remaining: u32,
    offset: u64,
}

struct Reader<'a> {
    bytes: &'a Bytes,
    pos: usize,
    end: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<usize, FormatError> {
        let start = self.pos;
        let end = start
            .checked_add(n)
            .ok_or(FormatError::BadRecords("length overflow"))?;
        if end > self.end {
            return Err(FormatError::BadRecords("field past end of record"));
        }
        self.pos = end;
        Ok(start)
    }
    fn u32(&mut self) -> Result<u32, FormatError> {
        let at = self.take(4)?;
        Ok(le_u32(self.bytes, at))
    }
    fn i64(&mut self) -> Result<i64, FormatError> {
        let at = self.take(8)?;
        Ok(le_u64(self.bytes, at) as i64)
    }
    fn slice(&mut self, n: usize) -> Result<Bytes, FormatError> {
        let at = self.take(n)?;
        Ok(self.bytes.slice(at..at + n))
    }
}

impl RecordIter {
    fn next_record(&mut self) -> Result<RecordView, FormatError> {
        let mut head = Reader {
            bytes: &self.bytes,
            pos: self.pos,
            end: self.bytes.len(),
        };
        let record_bytes = head.u32()? as usize;
        let mut r = Reader {
            bytes: &self.bytes,
            pos: head.pos,
            end: 0,
        };
        r.end = r
            .pos
            .checked_add(record_bytes)
            .ok_or(FormatError::BadRecords("length overflow"))?;
        if r.end > self.bytes.len() {
            return Err(FormatError::BadRecords("record past end of batch"));
        }
        let timestamp_ms = r.i64()?;
        let key_len = r.u32()? as i32;
        let key = match key_len {
            -1 => None,
            n if n >= 0 => Some(r.slice(n as usize)?),
            _ => return Err(FormatError::BadRecords("negative key length")),
        };
        let value_len = r.u32()? as usize;
        let value = r.slice(value_len)?;
        let header_count = r.u32()? as usize;
        if header_count > RECORD_HEADERS_MAX {
            return Err(FormatError::BadRecords("too many headers"));
        }
        let mut headers = Vec::with_capacity(header_count);
        for _ in 0..header_count {
            let key_len = r.u32()? as usize;
            let key = r.slice(key_len)?;
            let value_len = r.u32()? as usize;
            let value = r.slice(value_len)?;
            headers.push(Header { key, value });
        }
        if r.pos != r.end {
            return Err(FormatError::BadRecords("record length mismatch"));
        }
        self.pos = r.end;
        let offset = self.offset;
        self.offset += 1;
        Ok(RecordView {
            offset,
            timestamp_ms,
            key,
            value,
            headers,
        })
    }
}

impl Iterator for RecordIter {
    type Item = Result<RecordView, FormatError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            if self.pos != self.bytes.len() {
                self.pos = self.bytes.len();
                return Some(Err(FormatError::BadRecords("trailing bytes after records")));
            }
            return None;
        }
        match self.next_record() {
            Ok(record) => {
                self.remaining -= 1;
                Some(Ok(record))
            }
            Err(e) => {
                self.remaining = 0;
                self.pos = self.bytes.len();
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(key: Option<&[u8]>, value: &[u8], ts: i64, headers: &[(&[u8], &[u8])]) -> Record {
        Record {
            key: key.map(Bytes::copy_from_slice),
            value: Bytes::copy_from_slice(value),
            timestamp_ms: ts,
            headers: headers
                .iter()
                .map(|(k, v)| Header {
                    key: Bytes::copy_from_slice(k),
                    value: Bytes::copy_from_slice(v),
                })
                .collect(),
        }
    }

    #[test]
    fn round_trip_literal() {
        let records = vec![
            record(Some(b"k"), b"v1", 5, &[(b"h", b"x")]),
            record(None, b"", 3, &[]),
        ];
        let producer = Some(ProducerSeq {
            producer_id: 7,
            sequence: 9,
        });
        let bytes = encode_batch(100, producer, &records);
        assert_eq!(bytes.len(), batch_encoded_bytes(&records));
        assert_eq!(&bytes[8..12], &[0x53, 0x4c, 1, 1]);
        let view = BatchView::parse(&bytes).unwrap();
        let h = view.header();
        assert_eq!(
            (
                h.base_offset,
                h.record_count,
                h.first_timestamp_ms,
                h.max_timestamp_ms
            ),
            (100, 2, 5, 5)
        );
        assert_eq!(h.producer, producer);
        let decoded: Vec<_> = view.records().collect::<Result<_, _>>().unwrap();
        assert_eq!(decoded[0].offset, 100);
        assert_eq!(decoded[0].key.as_deref(), Some(&b"k"[..]));
        assert_eq!(decoded[0].headers[0].value, Bytes::from_static(b"x"));
        assert_eq!(decoded[1].offset, 101);
        assert_eq!(decoded[1].key, None);
    }

    #[test]
    fn every_single_bit_flip_is_rejected() {
        let bytes = encode_batch(
            1,
            None,
            &[record(Some(b"key"), b"value", 1, &[(b"a", b"b")])],
        );
        for bit in 0..bytes.len() * 8 {
            let mut v = bytes.to_vec();
            v[bit / 8] ^= 1 << (bit % 8);
            assert!(
                BatchView::parse(&Bytes::from(v)).is_err(),
                "bit {bit} not detected"
            );
        }
    }

    #[test]
    fn salt_zero_is_the_plain_crc32_and_a_salted_batch_needs_its_salt() {
        let records = [record(Some(b"k"), b"value", 5, &[])];
        let plain = encode_batch(9, None, &records);
        assert_eq!(
            u32::from_le_bytes(plain[4..8].try_into().unwrap()),
            crc32fast::hash(&plain[8..]),
            "unsalted segments written before salts existed must still verify"
        );
        let salted = encode_salted_batch(0x5eed_1234, 9, None, &records);
        assert_eq!(salted[8..], plain[8..], "only the CRC differs");
        assert!(BatchView::parse_salted(&salted, 0x5eed_1234).is_ok());
        for other in [0, 1, 0x5eed_1235, u32::MAX] {
            assert!(matches!(
                BatchView::parse_salted(&salted, other),
                Err(FormatError::BadCrc { .. })
            ));
        }
        assert!(BatchView::parse_salted(&plain, 0x5eed_1234).is_err());
    }

    #[test]
    fn truncation_and_zero_are_typed() {
        let bytes = encode_batch(1, None, &[record(None, b"abc", 1, &[])]);
        assert_eq!(decode_header(&[0u8; 64]), Err(FormatError::Zero));
        for cut in 0..bytes.len() {
            assert!(check_batch(&bytes[..cut], 0).is_err());
        }
        assert!(matches!(
            decode_header(&[1, 0, 0, 0]),
            Err(FormatError::BadLength(1))
        ));
    }

    fn arb_record() -> impl Strategy<Value = Record> {
        (
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16)),
            proptest::collection::vec(any::<u8>(), 0..64),
            any::<i64>(),
            proptest::collection::vec(
                (
                    proptest::collection::vec(any::<u8>(), 0..8),
                    proptest::collection::vec(any::<u8>(), 0..8),
                ),
                0..3,
            ),
        )
            .prop_map(|(k, v, ts, hs)| Record {
                key: k.map(Bytes::from),
                value: Bytes::from(v),
                timestamp_ms: ts,
                headers: hs
                    .into_iter()
                    .map(|(k, v)| Header {
                        key: k.into(),
                        value: v.into(),
                    })
                    .collect(),
            })
    }

    proptest! {
        #[test]
        fn prop_round_trip(records in proptest::collection::vec(arb_record(), 1..20), base in any::<u32>(),
                           pid in proptest::option::of((any::<u64>(), any::<u64>()))) {
            let producer = pid.map(|(producer_id, sequence)| ProducerSeq { producer_id, sequence });
            let bytes = encode_batch(u64::from(base), producer, &records);
            let view = BatchView::parse(&bytes).unwrap();
            prop_assert_eq!(view.header().producer, producer);
            let decoded: Vec<_> = view.records().collect::<Result<_, _>>().unwrap();
            prop_assert_eq!(decoded.len(), records.len());
            for (i, (d, r)) in decoded.iter().zip(&records).enumerate() {
                prop_assert_eq!(d.offset, u64::from(base) + i as u64);
                prop_assert_eq!(&d.key, &r.key);
                prop_assert_eq!(&d.value, &r.value);
                prop_assert_eq!(d.timestamp_ms, r.timestamp_ms);
                prop_assert_eq!(&d.headers, &r.headers);
            }
        }

        #[test]
        fn prop_garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let bytes = Bytes::from(data);
            if let Ok(view) = BatchView::parse(&bytes) {
                for r in view.records() { let _ = r; }
            }
        }

        #[test]
        fn prop_valid_crc_bad_structure_never_panics(records in proptest::collection::vec(arb_record(), 1..5),
                                                    at in any::<usize>(), byte in any::<u8>()) {
            let mut v = encode_batch(0, None, &records).to_vec();
            let at = BATCH_HEADER_BYTES + at % (v.len() - BATCH_HEADER_BYTES);
            v[at] = byte;
            let crc = crc32(0, &v[8..]);
            v[4..8].copy_from_slice(&crc.to_le_bytes());
            let bytes = Bytes::from(v);
            if let Ok(view) = BatchView::parse(&bytes) {
                for r in view.records() { let _ = r; }
            }
        }
    }
}
