//! Fuzzes the recovery scan over arbitrary segment bytes: it never panics,
//! never accepts bytes past the window, never goes backwards in offsets, and
//! never calls anything below the durable point a torn tail.
#![no_main]

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use shardlog_engine::{ScanEnd, scan_batches};

#[derive(Debug, Arbitrary)]
struct Input {
    window: Vec<u8>,
    window_pos: u16,
    expected_offset: u32,
    durable_within: u16,
    at_eof: bool,
}

fuzz_target!(|input: Input| {
    let window = Bytes::from(input.window);
    let window_pos = u64::from(input.window_pos);
    let durable_pos = window_pos + u64::from(input.durable_within) % (window.len() as u64 + 1);
    let expected_offset = u64::from(input.expected_offset);
    let mut last_next = expected_offset;
    let outcome = scan_batches(
        &window,
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
});
