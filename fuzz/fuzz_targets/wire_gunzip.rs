//! Fuzzes gzip decompression of message bodies: arbitrary (mostly invalid)
//! gzip must fail cleanly, and nothing may inflate past the message limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardlog_wire::codec;

/// Small limit so that decompression bombs are cut off quickly.
const FUZZ_MESSAGE_BYTES_MAX: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    if let Ok(plain) = codec::gunzip(data, FUZZ_MESSAGE_BYTES_MAX) {
        assert!(
            plain.len() <= FUZZ_MESSAGE_BYTES_MAX,
            "inflated past the limit"
        );
    }
});
