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
//!
//! Every check uses the segment's salt (the seed of its batch CRCs, 0 when unsalted). In a
//! salted segment, a recycled file, the bytes past the data may be an earlier life's:
//! [`find_salted_batch`] is how recovery tells later synced batches of this segment from them.

use bytes::Bytes;

use crate::format::{
    BATCH_MAGIC, BATCH_VERSION, BatchHeader, BatchView, FormatError, RECORD_FIXED_BYTES,
    check_batch, decode_header,
};

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

fn classify(window: &Bytes, at: usize, salt: u32, expected_offset: u64) -> Found {
    let rest = window.slice(at..);
    match decode_header(&rest) {
        Err(FormatError::Zero) => return Found::Zero,
        Err(FormatError::Truncated { .. }) => return Found::Incomplete,
        Err(e) => return Found::Invalid(e.to_string()),
        Ok(h) if h.batch_bytes as usize > rest.len() => return Found::Incomplete,
        Ok(_) => {}
    }
    match BatchView::parse_salted(&rest, salt) {
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
/// `salt` seeds the segment's batch CRCs; `expected_offset` is the base offset of the batch at
/// `window_pos`; `durable_pos` the durable point; `at_eof` says the window reaches the end of
/// the file. `on_batch(pos, header)` is called for every accepted batch, in order.
pub fn scan_batches(
    window: &Bytes,
    salt: u32,
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
            classify(window, at, salt, next_offset)
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

/// What [`find_salted_batch`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaltedSearch {
    /// A batch valid under the salt, at byte `pos` of the file.
    Found {
        /// Where the batch starts.
        pos: u64,
        /// Its base offset.
        base_offset: u64,
    },
    /// No batch valid under the salt starts in the searched range.
    NotFound,
    /// The CRC budget ran out first: undecided.
    BudgetSpent,
}

/// Searches for a batch of this segment (valid under `salt`) that starts in the first
/// `starts_within` bytes of `window` (the file's bytes from `window_pos`) and continues the log
/// that ended at `end_pos` with `end_offset`.
///
/// A candidate must carry the magic and version, a base offset at least `end_offset` and no
/// further past it than the bytes between could hold records, and a valid CRC under the salt.
/// Stale batches of the file's earlier life fail the offset test (their offsets are below this
/// segment's base); batches a client wrote inside record values fail the CRC, since the salt
/// is never exposed. Only candidates passing the cheap tests cost a CRC pass, and at most
/// `crc_budget_bytes` are checksummed in all (the budget is decremented).
pub fn find_salted_batch(
    window: &Bytes,
    window_pos: u64,
    starts_within: usize,
    salt: u32,
    (end_pos, end_offset): (u64, u64),
    crc_budget_bytes: &mut u64,
) -> SaltedSearch {
    const MAGIC_AT: usize = 8;
    let mut tag = [0u8; 3];
    tag[..2].copy_from_slice(&BATCH_MAGIC.to_le_bytes());
    tag[2] = BATCH_VERSION;
    let tags = memchr::memmem::find_iter(window, &tag);
    for at in tags.filter_map(|i| i.checked_sub(MAGIC_AT)) {
        if at >= starts_within {
            break;
        }
        let Ok(header) = decode_header(&window[at..]) else {
            continue;
        };
        let pos = window_pos + at as u64;
        let records_room = pos.saturating_sub(end_pos) / RECORD_FIXED_BYTES as u64;
        let plausible = header.base_offset >= end_offset
            && header.base_offset - end_offset <= records_room
            && at + header.batch_bytes as usize <= window.len();
        if !plausible {
            continue;
        }
        let cost = u64::from(header.batch_bytes);
        if cost > *crc_budget_bytes {
            return SaltedSearch::BudgetSpent;
        }
        *crc_budget_bytes -= cost;
        if check_batch(&window[at..], salt).is_ok() {
            return SaltedSearch::Found {
                pos,
                base_offset: header.base_offset,
            };
        }
    }
    SaltedSearch::NotFound
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{encode_batch, encode_salted_batch};
    use crate::types::Record;

    fn records(n: usize) -> Vec<Record> {
        (0..n)
            .map(|i| Record {
                key: None,
                value: Bytes::from(vec![i as u8; 10]),
                timestamp_ms: 1,
                headers: vec![],
            })
            .collect()
    }

    fn batch(base: u64, n: usize) -> Vec<u8> {
        encode_batch(base, None, &records(n)).to_vec()
    }

    const SALT: u32 = 0x1234_5678;

    /// A record value that carries a whole well-formed unsalted batch, as a client could send.
    fn forged_in_value(base: u64) -> Vec<u8> {
        let inner = batch(base, 1);
        let outer = Record {
            key: None,
            value: Bytes::from(inner),
            timestamp_ms: 1,
            headers: vec![],
        };
        encode_batch(3, None, &[outer]).to_vec()
    }

    #[test]
    fn salted_search_skips_stale_and_forged_batches_and_finds_its_own() {
        // An earlier life: old batches (offsets 0..) and a client value holding a forged batch
        // with a plausible offset of the new life (which ended at offset 100, byte 0).
        let mut stale = batch(0, 2);
        stale.extend(forged_in_value(100));
        stale.extend(batch(2, 3));
        let window = Bytes::from(stale.clone());
        let mut budget = u64::MAX;
        let end = (0, 100);
        let found = find_salted_batch(&window, 0, window.len(), SALT, end, &mut budget);
        assert_eq!(found, SaltedSearch::NotFound);
        // Unsalted, the forged batch would have passed: this is what the salt is for.
        let found = find_salted_batch(&window, 0, window.len(), 0, end, &mut budget);
        assert!(matches!(
            found,
            SaltedSearch::Found {
                base_offset: 100,
                ..
            }
        ));
        // A batch of this segment after the stale bytes is found.
        let own_at = stale.len() as u64;
        stale.extend(encode_salted_batch(SALT, 101, None, &records(2)).to_vec());
        let window = Bytes::from(stale);
        let found = find_salted_batch(&window, 0, window.len(), SALT, end, &mut budget);
        assert_eq!(
            found,
            SaltedSearch::Found {
                pos: own_at,
                base_offset: 101
            }
        );
        // ...but not when it starts past the searched range.
        let found = find_salted_batch(&window, 0, own_at as usize, SALT, end, &mut budget);
        assert_eq!(found, SaltedSearch::NotFound);
    }

    #[test]
    fn salted_search_rejects_offsets_the_bytes_between_could_not_hold() {
        let own = encode_salted_batch(SALT, 1_000_000, None, &records(1));
        let mut v = vec![0u8; 4096];
        v.extend_from_slice(&own);
        let window = Bytes::from(v);
        let mut budget = u64::MAX;
        // 4096 bytes hold at most 4096 / 24 records: offset 1,000,000 cannot follow 0.
        let found = find_salted_batch(&window, 0, window.len(), SALT, (0, 0), &mut budget);
        assert_eq!(found, SaltedSearch::NotFound);
        assert_eq!(budget, u64::MAX, "no CRC spent on implausible candidates");
        let found = find_salted_batch(&window, 0, window.len(), SALT, (0, 999_990), &mut budget);
        assert!(matches!(found, SaltedSearch::Found { pos: 4096, .. }));
    }

    #[test]
    fn salted_search_stops_when_the_crc_budget_is_spent() {
        let mut v = Vec::new();
        for _ in 0..50 {
            v.extend(forged_in_value(100));
        }
        let window = Bytes::from(v);
        let one = batch(100, 1).len() as u64;
        let mut budget = 10 * one;
        let found = find_salted_batch(&window, 0, window.len(), SALT, (0, 100), &mut budget);
        assert_eq!(found, SaltedSearch::BudgetSpent);
        assert!(budget < one);
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
        let out = scan_batches(&b, 0, 0, 0, 0, true, |_, _| {});
        assert_eq!((out.next_offset, out.end), (5, ScanEnd::Clean));
        let (b, _) = log(&[]);
        let out = scan_batches(&b, 0, 0, 0, b.len() as u64, true, |_, _| {});
        assert_eq!(
            (out.next_offset, out.end_pos, out.end),
            (5, b.len() as u64, ScanEnd::Clean)
        );
    }

    #[test]
    fn garbage_past_durable_is_torn_below_is_corrupt() {
        let (b, first) = log(&[7; 100]);
        let out = scan_batches(&b, 0, 0, 0, first, true, |_, _| {});
        assert!(matches!(out.end, ScanEnd::TornTail(_)));
        assert_eq!(out.next_offset, 5);
        let out = scan_batches(&b, 0, 0, 0, b.len() as u64, true, |_, _| {});
        assert!(matches!(out.end, ScanEnd::Corrupt(_)));
    }

    #[test]
    fn bit_flip_decisions() {
        let (b, first) = log(&[]);
        let mut v = b.to_vec();
        v[first as usize + 30] ^= 4;
        let flipped = Bytes::from(v);
        let torn = scan_batches(&flipped, 0, 0, 0, first, true, |_, _| {});
        assert_eq!((torn.end_pos, torn.next_offset), (first, 2));
        assert!(matches!(torn.end, ScanEnd::TornTail(_)));
        let corrupt = scan_batches(&flipped, 0, 0, 0, first + 1, true, |_, _| {});
        assert!(matches!(corrupt.end, ScanEnd::Corrupt(_)));
    }

    #[test]
    fn need_more_when_window_cuts_a_batch() {
        let (b, first) = log(&[]);
        let out = scan_batches(
            &b.slice(..first as usize + 10),
            0,
            0,
            0,
            0,
            false,
            |_, _| {},
        );
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
            let out = scan_batches(&b, 0, 0, 0, durable, at_eof, |_, _| {});
            proptest::prop_assert!(out.end_pos as usize <= b.len());
        }
    }

    #[test]
    fn wrong_offset_is_not_accepted() {
        let (b, _) = log(&[]);
        let out = scan_batches(&b, 0, 0, 1, 0, true, |_, _| {});
        assert!(matches!(out.end, ScanEnd::TornTail(_)));
        assert_eq!(out.end_pos, 0);
    }
}
