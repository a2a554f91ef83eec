//! Fuzzes the gRPC header parsers: `grpc-timeout`, `-bin` base64 values,
//! percent-encoded `grpc-message` and metadata names. Checks they never
//! panic and that encode/decode pairs round-trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardlog_wire::metadata;

fn timeout(data: &[u8]) {
    if let Ok(duration) = metadata::parse_timeout(data) {
        assert!(
            data.len() <= metadata::TIMEOUT_DIGITS_MAX + 1,
            "accepted > 8 digits"
        );
        // Encoding rounds up to a representable unit: never shorter.
        let encoded = metadata::encode_timeout(duration);
        let reparsed = metadata::parse_timeout(encoded.as_bytes()).expect("own encoding parses");
        assert!(reparsed >= duration, "re-encoded timeout is shorter");
    }
}

fn binary(data: &[u8]) {
    if let Ok(values) = metadata::decode_bin_values(data) {
        let joined = metadata::decode_bin(data).expect("decode_bin agrees with decode_bin_values");
        assert_eq!(values.concat(), joined, "decode_bin is the concatenation");
        for value in values {
            let encoded = metadata::encode_bin(&value);
            assert_eq!(metadata::decode_bin(encoded.as_bytes()).ok(), Some(value));
        }
    }
}

fn message(data: &[u8]) {
    // Any received value decodes without failing the call.
    let _ = metadata::decode_grpc_message(data);
    // Any status message survives the header byte-exactly.
    if let Ok(text) = std::str::from_utf8(data) {
        let encoded = metadata::encode_grpc_message(text);
        assert!(
            metadata::is_valid_ascii_value(encoded.as_bytes()),
            "unsendable grpc-message"
        );
        assert_eq!(metadata::decode_grpc_message(encoded.as_bytes()), text);
    }
}

fn name(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data)
        && metadata::validate_name(text).is_ok()
    {
        assert!(!text.is_empty());
        assert!(
            text.bytes().all(|b| !b.is_ascii_uppercase()),
            "upper-case name accepted"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    timeout(data);
    binary(data);
    message(data);
    name(data);
});
