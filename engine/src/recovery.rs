//! The recovery scan: walks batches from a known-good position and decides, with one decision
//! table, whether each position holds a batch to keep, the clean end of the log, a torn tail
//! (cut it) or corruption (refuse service, never cut).
//!
//! | found at `pos`                          | `pos` below the durable point | at or past it     |
//! |-----------------------------------------|-------------------------------|-------------------|
//! | valid batch with the expected offset     | accept                        | accept            |
//! | batch cut off by the end of the buffer   | need more bytes               | need more bytes   |
//! | zero length field                        | corruption                    | clean end         |
//! | anything else (bad length, magic, CRC,   | corruption                    | torn tail         |
//! |  structure, unexpected offset, EOF)      |                               |                   |
//!
//! The durable point is the checkpoint's position for the active segment, and the whole file
//! for a sealed segment (rolled only after a full sync). Pure and zero-copy: the caller feeds
//! byte windows (the partition reads the file in chunks), fuzz targets feed arbitrary bytes.

use bytes::Bytes;

use crate::format::{BatchHeader, BatchView, FormatError, decode_header};

/// How a scan ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanEnd {
    /// A zero length field at or past the durable point: the log ends here.
    Clean,
    /// An invalid batch at or past the durable point: unsynced writes torn by a crash; the
    /// log is cut here.
    TornTail(String),
    /// An invalid batch (or missing bytes) below the durable point.
    Corrupt(String),
    /// The window ended inside a batch; scan again from `end_pos` with more bytes.
    NeedMore,
}

/// Result of [`scan_batches`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanOutcome {
    /// Position after the last accepted batch (where the scan stopped).
    pub end_pos: u64,
    /// Offset after the last accepted batch.
    pub next_offset: u64,
    /// Why it stopped.
    pub end: ScanEnd,
}

/// What one position holds, before the durable point is considered.
enum Found {
    Valid(BatchHeader),
    Incomplete,
    Zero,
    Invalid(String),
}

/// Which side of the durable point a position is on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Zone {
    Below,
    AtOrPast,
}

/// What to do at a position.
enum Action {
    Accept(BatchHeader),
    Stop(ScanEnd),
}

/// The decision table (see the module docs).
fn decide(found: Found, zone: Zone, at_eof: bool) -> Action {
    match (found, zone, at_eof) {
        (Found::Valid(h), _, _) => Action::Accept(h),
        (Found::Incomplete, _, false) => Action::Stop(ScanEnd::NeedMore),
        (Found::Incomplete, Zone::Below, true) => {
            Action::Stop(ScanEnd::Corrupt("file ends inside durable data".into()))
        }
        (Found::Incomplete, Zone::AtOrPast, true) => {
            Action::Stop(ScanEnd::TornTail("batch cut by end of file".into()))
        }
        (Found::Zero, Zone::Below, _) => {
            Action::Stop(ScanEnd::Corrupt("zeroed bytes inside durable data".into()))
        }
        (Found::Zero, Zone::AtOrPast, _) => Action::Stop(ScanEnd::Clean),
        (Found::Invalid(why), Zone::Below, _) => Action::Stop(ScanEnd::Corrupt(why)),
        (Found::Invalid(why), Zone::AtOrPast, _) => Action::Stop(ScanEnd::TornTail(why)),
    }
}

fn classify(window: &Bytes, at: usize, expected_offset: u64) -> Found {
    let rest = window.slice(at..);
    match decode_header(&rest) {
        Err(FormatError::Zero) => return Found::Zero,
        Err(FormatError::Truncated { .. }) => return Found::Incomplete,
        Err(e) => return Found::Invalid(e.to_string()),
        Ok(h) if h.batch_bytes as usize > rest.len() => return Found::Incomplete,
        Ok(_) => {}
    }
    match BatchView::parse(&rest) {
        Err(e) => Found::Invalid(e.to_string()),
        Ok(v) if v.header().base_offset != expected_offset => Found::Invalid(format!(
            "base offset {} where {} was expected",
            v.header().base_offset,
            expected_offset
        )),
        Ok(v) => Found::Valid(*v.header()),
    }
}

/// Scans the batches in `window`, which holds the file's bytes from `window_pos`.
///
/// `expected_offset` is the base offset of the batch at `window_pos`; `durable_pos` the
/// durable point; `at_eof` says the window reaches the end of the file. `on_batch(pos, header)`
/// is called for every accepted batch, in order.
pub fn scan_batches(
    window: &Bytes,
    window_pos: u64,
    expected_offset: u64,
    durable_pos: u64,
    at_eof: bool,
    mut on_batch: impl FnMut(u64, &BatchHeader),
) -> ScanOutcome {
    let mut at = 0usize;
    let mut next_offset = expected_offset;
    loop {
        let pos = window_pos + at as u64;
        let zone = if pos < durable_pos {
            Zone::Below
        } else {
            Zone::AtOrPast
        };
        let found = if at == window.len() {
            Found::Incomplete
        } else {
            classify(window, at, next_offset)
        };
        let eof_here = at_eof && matches!(found, Found::Incomplete);
        match decide(found, zone, eof_here) {
            Action::Accept(h) => {
                on_batch(pos, &h);
                at += h.batch_bytes as usize;
                next_offset = h.next_offset();
            }
            Action::Stop(ScanEnd::TornTail(_)) if at == window.len() && zone == Zone::AtOrPast => {
                // End of file exactly at a batch boundary past the durable point: a clean end.
                return ScanOutcome {
                    end_pos: pos,
                    next_offset,
                    end: ScanEnd::Clean,
                };
            }
            Action::Stop(end) => {
                return ScanOutcome {
                    end_pos: pos,
                    next_offset,
                    end,
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::encode_batch;
    use crate::types::Record;

    fn batch(base: u64, n: usize) -> Vec<u8> {
        let records: Vec<Record> = (0..n)
            .map(|i| Record {
                key: None,
                value: Bytes::from(vec![i as u8; 10]),
                timestamp_ms: 1,
                headers: vec![],
            })
            .collect();
        encode_batch(base, None, &records).to_vec()
    }

    fn log(extra: &[u8]) -> (Bytes, u64) {
        let mut v = batch(0, 2);
        let first = v.len() as u64;
        v.extend(batch(2, 3));
        v.extend_from_slice(extra);
        (Bytes::from(v), first)
    }

    #[test]
    fn clean_end_on_zeros_and_eof() {
        let (b, _) = log(&[0; 100]);
        let out = scan_batches(&b, 0, 0, 0, true, |_, _| {});
        assert_eq!((out.next_offset, out.end), (5, ScanEnd::Clean));
        let (b, _) = log(&[]);
        let out = scan_batches(&b, 0, 0, b.len() as u64, true, |_, _| {});
        assert_eq!(
            (out.next_offset, out.end_pos, out.end),
            (5, b.len() as u64, ScanEnd::Clean)
        );
    }

    #[test]
    fn garbage_past_durable_is_torn_below_is_corrupt() {
        let (b, first) = log(&[7; 100]);
        let out = scan_batches(&b, 0, 0, first, true, |_, _| {});
        assert!(matches!(out.end, ScanEnd::TornTail(_)));
        assert_eq!(out.next_offset, 5);
        let out = scan_batches(&b, 0, 0, b.len() as u64, true, |_, _| {});
        assert!(matches!(out.end, ScanEnd::Corrupt(_)));
    }

    #[test]
    fn bit_flip_decisions() {
        let (b, first) = log(&[]);
        let mut v = b.to_vec();
        v[first as usize + 30] ^= 4;
        let flipped = Bytes::from(v);
        let torn = scan_batches(&flipped, 0, 0, first, true, |_, _| {});
        assert_eq!((torn.end_pos, torn.next_offset), (first, 2));
        assert!(matches!(torn.end, ScanEnd::TornTail(_)));
        let corrupt = scan_batches(&flipped, 0, 0, first + 1, true, |_, _| {});
        assert!(matches!(corrupt.end, ScanEnd::Corrupt(_)));
    }

    #[test]
    fn need_more_when_window_cuts_a_batch() {
        let (b, first) = log(&[]);
        let out = scan_batches(&b.slice(..first as usize + 10), 0, 0, 0, false, |_, _| {});
        assert_eq!((out.end_pos, out.end), (first, ScanEnd::NeedMore));
    }

    proptest::proptest! {
        #[test]
        fn prop_scan_never_panics_and_stays_in_bounds(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048),
            prefix in 0usize..3, durable in 0u64..4096, at_eof in proptest::prelude::any::<bool>(),
        ) {
            let (valid, _) = log(&[]);
            let mut v = valid[..valid.len() * prefix / 2].to_vec();
            v.extend(data);
            let b = Bytes::from(v);
            let out = scan_batches(&b, 0, 0, durable, at_eof, |_, _| {});
            proptest::prop_assert!(out.end_pos as usize <= b.len());
        }
    }

    #[test]
    fn wrong_offset_is_not_accepted() {
        let (b, _) = log(&[]);
        let out = scan_batches(&b, 0, 1, 0, true, |_, _| {});
        assert!(matches!(out.end, ScanEnd::TornTail(_)));
        assert_eq!(out.end_pos, 0);
    }
}
