//! Fuzzes the recovery scan over arbitrary segment bytes: it never panics,
//! never accepts bytes past the window, never goes backwards in offsets, and
//! never calls anything below the durable point a torn tail. Also the salted
//! evidence search: in bounds, within its CRC budget, and only ever finding
//! a batch valid under the salt.
#![no_main]

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use shardlog_engine::format::check_batch;
use shardlog_engine::{SaltedSearch, ScanEnd, find_salted_batch, scan_batches};

#[derive(Debug, Arbitrary)]
struct Input {
    window: Vec<u8>,
    window_pos: u16,
    expected_offset: u32,
    durable_within: u16,
    at_eof: bool,
    salt: u32,
    starts_within: u16,
    crc_budget_bytes: u16,
}

fuzz_target!(|input: Input| {
    let window = Bytes::from(input.window.clone());
    let window_pos = u64::from(input.window_pos);
    let durable_pos = window_pos + u64::from(input.durable_within) % (window.len() as u64 + 1);
    let expected_offset = u64::from(input.expected_offset);
    let mut last_next = expected_offset;
    let outcome = scan_batches(
        &window,
        input.salt,
        window_pos,
        expected_offset,
        durable_pos,
        input.at_eof,
        |_pos, header| {
            assert_eq!(
                header.base_offset, last_next,
                "accepted batches are contiguous"
            );
            last_next = header.next_offset();
        },
    );
    assert!(outcome.end_pos >= window_pos);
    assert!(
        outcome.end_pos <= window_pos + window.len() as u64,
        "scan accepted bytes past the window"
    );
    assert_eq!(outcome.next_offset, last_next);
    if let ScanEnd::TornTail(_) = outcome.end {
        assert!(
            outcome.end_pos >= durable_pos,
            "a torn tail below the durable point would truncate acknowledged data"
        );
    }
    check_salted_search(&window, window_pos, &input);
});

fn check_salted_search(window: &Bytes, window_pos: u64, input: &Input) {
    let starts_within = usize::from(input.starts_within);
    let end = (window_pos, u64::from(input.expected_offset));
    let budget_before = u64::from(input.crc_budget_bytes);
    let mut budget = budget_before;
    let found = find_salted_batch(
        window,
        window_pos,
        starts_within,
        input.salt,
        end,
        &mut budget,
    );
    assert!(budget <= budget_before, "the CRC budget only shrinks");
    if let SaltedSearch::Found { pos, base_offset } = found {
        let at = usize::try_from(pos - window_pos).expect("found inside the window");
        assert!(
            at < starts_within.min(window.len()),
            "found past the searched range"
        );
        let header = check_batch(&window[at..], input.salt).expect("found a valid salted batch");
        assert_eq!(header.base_offset, base_offset);
        assert!(
            base_offset >= end.1,
            "found a batch older than the log's end"
        );
    }
}
