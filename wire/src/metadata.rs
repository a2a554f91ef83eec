//! Custom metadata (request headers, response headers, trailers) and the pure
//! parsers of the gRPC header formats: metadata names, `-bin` base64 values,
//! `grpc-timeout` and the percent-encoded `grpc-message`.
//!
//! `Metadata` wraps an `http::HeaderMap` so that moving headers between h2 and
//! handlers costs no copy; binary values are stored as they travel (unpadded
//! base64) and decoded on access.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use percent_encoding::{AsciiSet, CONTROLS, percent_decode, utf8_percent_encode};

/// Longest `grpc-timeout` value: at most 8 ASCII digits (PROTOCOL-HTTP2.md).
pub const TIMEOUT_DIGITS_MAX: usize = 8;

/// Suffix marking a binary metadata entry.
pub const BINARY_SUFFIX: &str = "-bin";

/// Base64 engine: emits unpadded (as gRPC asks), accepts padded and unpadded.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Bytes that `grpc-message` percent-encodes: everything outside printable
/// ASCII 0x20..=0x7E (non-ASCII is always encoded by the crate) plus `%`.
const GRPC_MESSAGE_ENCODE_SET: &AsciiSet = &CONTROLS.add(b'%');

/// Why a metadata name, value or gRPC header could not be parsed or built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    /// The name is empty or has a byte outside `[0-9a-z_.-]`.
    #[error("invalid metadata name {name:?}: allowed are [0-9a-z_.-]")]
    InvalidName {
        /// The rejected name.
        name: String,
    },
    /// An ASCII value has a byte outside printable ASCII 0x20..=0x7E.
    #[error("invalid ASCII metadata value for {name:?}: allowed are bytes 0x20..=0x7E")]
    InvalidAsciiValue {
        /// The entry's name.
        name: String,
    },
    /// A binary (`-bin`) value is not valid base64.
    #[error("invalid base64 in binary metadata value")]
    InvalidBase64,
    /// An ASCII accessor was used on a `-bin` name, or the reverse.
    #[error("metadata name {name:?} has the wrong kind (binary names end in -bin)")]
    WrongKind {
        /// The entry's name.
        name: String,
    },
    /// `grpc-timeout` is not 1..=8 ASCII digits followed by one of `HMSmun`.
    #[error("invalid grpc-timeout value")]
    InvalidTimeout,
}

/// Checks a metadata name: non-empty, only `[0-9a-z_.-]`.
pub fn validate_name(name: &str) -> Result<(), MetadataError> {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'z' | b'_' | b'.' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(MetadataError::InvalidName { name: name.into() })
    }
}

/// Whether `name` names a binary entry (ends in `-bin`).
pub fn is_binary_name(name: &str) -> bool {
    name.ends_with(BINARY_SUFFIX)
}

/// Checks an ASCII metadata value: printable ASCII 0x20..=0x7E only.
pub fn is_valid_ascii_value(value: &[u8]) -> bool {
    value.iter().all(|b| (0x20..=0x7e).contains(b))
}

/// Encodes a binary value as unpadded standard base64 (what gRPC emits).
pub fn encode_bin(value: &[u8]) -> String {
    BASE64.encode(value)
}

/// Decodes one `-bin` header value: base64, padded or unpadded; a header
/// that carries several values joined by `,` decodes to their concatenation
/// (use [`decode_bin_values`] to keep them apart).
pub fn decode_bin(value: &[u8]) -> Result<Vec<u8>, MetadataError> {
    let mut out = Vec::with_capacity(value.len() * 3 / 4);
    for part in value.split(|b| *b == b',') {
        let part = part.trim_ascii();
        BASE64
            .decode_vec(part, &mut out)
            .map_err(|_| MetadataError::InvalidBase64)?;
    }
    Ok(out)
}

/// Decodes one `-bin` header value into its `,`-separated values.
pub fn decode_bin_values(value: &[u8]) -> Result<Vec<Vec<u8>>, MetadataError> {
    value
        .split(|b| *b == b',')
        .map(|part| {
            BASE64
                .decode(part.trim_ascii())
                .map_err(|_| MetadataError::InvalidBase64)
        })
        .collect()
}

/// Percent-encodes a status message for `grpc-message`: bytes outside
/// 0x20..=0x7E and `%` itself become `%XX` (UTF-8 bytes of non-ASCII text).
pub fn encode_grpc_message(message: &str) -> String {
    utf8_percent_encode(message, GRPC_MESSAGE_ENCODE_SET).to_string()
}

/// Decodes a `grpc-message` value. Malformed `%` sequences pass through
/// unchanged and invalid UTF-8 is replaced, as PROTOCOL-HTTP2.md asks of
/// receivers (never fail a call because of its message).
pub fn decode_grpc_message(value: &[u8]) -> String {
    String::from_utf8_lossy(&percent_decode(value).collect::<Vec<u8>>()).into_owned()
}

/// Parses a `grpc-timeout` value: 1..=8 ASCII digits then a unit, one of
/// `H` (hours), `M` (minutes), `S`, `m` (milli), `u` (micro), `n` (nano).
pub fn parse_timeout(value: &[u8]) -> Result<Duration, MetadataError> {
    let Some((&unit, digits)) = value.split_last() else {
        return Err(MetadataError::InvalidTimeout);
    };
    if digits.is_empty()
        || digits.len() > TIMEOUT_DIGITS_MAX
        || !digits.iter().all(u8::is_ascii_digit)
    {
        return Err(MetadataError::InvalidTimeout);
    }
    // At most 8 digits: fits u64 and, times 3600, cannot overflow.
    let count = digits
        .iter()
        .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
    let duration = match unit {
        b'H' => Duration::from_secs(count * 3600),
        b'M' => Duration::from_secs(count * 60),
        b'S' => Duration::from_secs(count),
        b'm' => Duration::from_millis(count),
        b'u' => Duration::from_micros(count),
        b'n' => Duration::from_nanos(count),
        _ => return Err(MetadataError::InvalidTimeout),
    };
    Ok(duration)
}

/// Encodes a timeout for `grpc-timeout` in the finest unit whose count fits
/// 8 digits, rounding up so the server never sees a shorter deadline.
/// Durations beyond 99,999,999 hours saturate.
pub fn encode_timeout(timeout: Duration) -> String {
    const COUNT_MAX: u128 = 99_999_999;
    const UNITS: [(u128, char); 6] = [
        (1, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ];
    let nanos = timeout.as_nanos();
    for (unit_nanos, unit) in UNITS {
        let count = nanos.div_ceil(unit_nanos);
        if count <= COUNT_MAX {
            return format!("{count}{unit}");
        }
    }
    format!("{COUNT_MAX}H")
}

/// Ordered multimap of custom metadata: ASCII entries and binary (`-bin`)
/// entries. Names are lower-case `[0-9a-z_.-]`.
///
/// Incoming request metadata also holds the protocol headers the client sent
/// (e.g. `content-type`, `user-agent`); when metadata is sent, reserved names
/// (`grpc-*`, `content-type`, `te`) are skipped.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    headers: HeaderMap,
}

/// One metadata value as seen while iterating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetadataValue<'a> {
    /// An ASCII entry's value.
    Ascii(&'a str),
    /// A binary entry's value as it travels (base64); see [`decode_bin`].
    Binary(&'a [u8]),
}

impl Metadata {
    /// Empty metadata (no allocation until the first insert).
    pub fn new() -> Metadata {
        Metadata {
            headers: HeaderMap::new(),
        }
    }

    /// Wraps received headers (no copy).
    pub fn from_headers(headers: HeaderMap) -> Metadata {
        Metadata { headers }
    }

    /// The underlying header map (values of `-bin` entries are base64).
    pub fn as_headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// Unwraps into the underlying header map.
    pub fn into_headers(self) -> HeaderMap {
        self.headers
    }

    /// Number of values (an entry with two values counts twice).
    pub fn len(&self) -> usize {
        self.headers.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.headers.is_empty()
    }

    /// First ASCII value of `name`; `None` if absent, binary or not ASCII.
    pub fn get(&self, name: &str) -> Option<&str> {
        if is_binary_name(name) {
            return None;
        }
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every ASCII value of `name`, in order.
    pub fn get_all<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a str> + 'a {
        let values = if is_binary_name(name) {
            None
        } else {
            Some(self.headers.get_all(name).iter())
        };
        values.into_iter().flatten().filter_map(|v| v.to_str().ok())
    }

    /// First value of the binary entry `name`, decoded (padded or unpadded
    /// base64). `None` if absent; `Some(Err)` if not valid base64.
    pub fn get_bin(&self, name: &str) -> Option<Result<Vec<u8>, MetadataError>> {
        if !is_binary_name(name) {
            return None;
        }
        self.headers
            .get(name)
            .map(|value| decode_bin(value.as_bytes()))
    }

    /// Every value of the binary entry `name` (headers repeated or joined by
    /// `,`), decoded.
    pub fn get_all_bin(&self, name: &str) -> Result<Vec<Vec<u8>>, MetadataError> {
        let mut values = Vec::new();
        if is_binary_name(name) {
            for value in self.headers.get_all(name) {
                values.extend(decode_bin_values(value.as_bytes())?);
            }
        }
        Ok(values)
    }

    /// Replaces every value of the ASCII entry `name` with `value`.
    pub fn insert(&mut self, name: &str, value: &str) -> Result<(), MetadataError> {
        let (name, value) = ascii_entry(name, value)?;
        self.headers.insert(name, value);
        Ok(())
    }

    /// Adds a value to the ASCII entry `name`, after any existing ones.
    pub fn append(&mut self, name: &str, value: &str) -> Result<(), MetadataError> {
        let (name, value) = ascii_entry(name, value)?;
        self.headers.append(name, value);
        Ok(())
    }

    /// Replaces every value of the binary entry `name` (must end in `-bin`).
    pub fn insert_bin(&mut self, name: &str, value: &[u8]) -> Result<(), MetadataError> {
        let (name, value) = binary_entry(name, value)?;
        self.headers.insert(name, value);
        Ok(())
    }

    /// Adds a value to the binary entry `name` (must end in `-bin`).
    pub fn append_bin(&mut self, name: &str, value: &[u8]) -> Result<(), MetadataError> {
        let (name, value) = binary_entry(name, value)?;
        self.headers.append(name, value);
        Ok(())
    }

    /// Removes every value of `name`; returns whether there was one.
    pub fn remove(&mut self, name: &str) -> bool {
        self.headers.remove(name).is_some()
    }

    /// Every entry in order: `(name, value)`.
    pub fn iter(&self) -> impl Iterator<Item = (&str, MetadataValue<'_>)> + '_ {
        self.headers.iter().filter_map(|(name, value)| {
            let name = name.as_str();
            let value = if is_binary_name(name) {
                MetadataValue::Binary(value.as_bytes())
            } else {
                MetadataValue::Ascii(value.to_str().ok()?)
            };
            Some((name, value))
        })
    }

    /// Appends the custom entries (reserved names skipped) to `headers`,
    /// consuming `self` so no value is copied.
    pub(crate) fn write_custom_into(self, headers: &mut HeaderMap) {
        let mut last_name: Option<HeaderName> = None;
        for (name, value) in self.headers {
            // `HeaderMap`'s owning iterator yields the name once per group.
            if let Some(name) = name {
                last_name = Some(name);
            }
            if let Some(name) = &last_name
                && !is_reserved_name(name.as_str())
            {
                headers.append(name.clone(), value);
            }
        }
    }
}

/// Names the protocol owns; never copied from user metadata onto the wire.
pub(crate) fn is_reserved_name(name: &str) -> bool {
    name.starts_with("grpc-")
        || name.starts_with(':')
        || matches!(name, "content-type" | "te" | "user-agent" | "host")
}

fn ascii_entry(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), MetadataError> {
    validate_name(name)?;
    if is_binary_name(name) {
        return Err(MetadataError::WrongKind { name: name.into() });
    }
    if !is_valid_ascii_value(value.as_bytes()) {
        return Err(MetadataError::InvalidAsciiValue { name: name.into() });
    }
    let invalid_value = || MetadataError::InvalidAsciiValue { name: name.into() };
    let header_value = HeaderValue::from_str(value).map_err(|_| invalid_value())?;
    Ok((header_name(name)?, header_value))
}

fn binary_entry(name: &str, value: &[u8]) -> Result<(HeaderName, HeaderValue), MetadataError> {
    validate_name(name)?;
    if !is_binary_name(name) {
        return Err(MetadataError::WrongKind { name: name.into() });
    }
    let encoded = Bytes::from(encode_bin(value));
    let header_value =
        HeaderValue::from_maybe_shared(encoded).map_err(|_| MetadataError::InvalidBase64)?;
    Ok((header_name(name)?, header_value))
}

fn header_name(name: &str) -> Result<HeaderName, MetadataError> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| MetadataError::InvalidName { name: name.into() })
}

impl fmt::Debug for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_allow_only_lowercase_digits_and_three_marks() {
        assert!(validate_name("x-user_id.v2").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("X-Upper").is_err());
        assert!(validate_name("sp ace").is_err());
        assert!(validate_name("col:on").is_err());
    }

    #[test]
    fn timeout_parses_every_unit_and_rejects_bad_values() {
        assert_eq!(parse_timeout(b"1H"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_timeout(b"2M"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_timeout(b"3S"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_timeout(b"4m"), Ok(Duration::from_millis(4)));
        assert_eq!(parse_timeout(b"5u"), Ok(Duration::from_micros(5)));
        assert_eq!(parse_timeout(b"6n"), Ok(Duration::from_nanos(6)));
        assert_eq!(
            parse_timeout(b"99999999H"),
            Ok(Duration::from_secs(99_999_999 * 3600))
        );
        assert_eq!(parse_timeout(b"0m"), Ok(Duration::ZERO));
        for bad in [
            &b""[..],
            b"S",
            b"123456789S",
            b"10",
            b"10s",
            b"-1S",
            b"1 S",
            b"1.5S",
            b"\xff1S",
        ] {
            assert_eq!(
                parse_timeout(bad),
                Err(MetadataError::InvalidTimeout),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn timeout_encoding_picks_finest_fitting_unit_and_rounds_up() {
        assert_eq!(encode_timeout(Duration::from_nanos(5)), "5n");
        assert_eq!(encode_timeout(Duration::from_millis(100)), "100000u");
        assert_eq!(encode_timeout(Duration::from_secs(10)), "10000000u");
        assert_eq!(encode_timeout(Duration::from_secs(1000)), "1000000m");
        assert_eq!(encode_timeout(Duration::from_nanos(100_000_001)), "100001u");
        assert_eq!(encode_timeout(Duration::from_secs(u64::MAX)), "99999999H");
        for d in [1u64, 999, 123_456_789, 86_400_000_000_000] {
            let d = Duration::from_nanos(d);
            let back = parse_timeout(encode_timeout(d).as_bytes()).expect("parses");
            assert!(back >= d);
        }
    }

    #[test]
    fn grpc_message_percent_encoding_is_byte_exact() {
        let message = "\t\ntest with whitespace\r\nand Unicode BMP ☺ and non-BMP 😈\t\n 100%";
        let encoded = encode_grpc_message(message);
        assert!(encoded.bytes().all(|b| (0x20..=0x7e).contains(&b)));
        assert_eq!(decode_grpc_message(encoded.as_bytes()), message);
        assert_eq!(encode_grpc_message("a%b ☺"), "a%25b %E2%98%BA");
        assert_eq!(decode_grpc_message(b"a%25b%20%E2%98%BA"), "a%b ☺");
        // Malformed escapes pass through; invalid UTF-8 is replaced.
        assert_eq!(decode_grpc_message(b"50%zz%"), "50%zz%");
        assert_eq!(decode_grpc_message(b"%FF"), "\u{fffd}");
    }

    #[test]
    fn binary_values_accept_padded_and_unpadded_and_emit_unpadded() {
        assert_eq!(encode_bin(&[0xab, 0xab, 0xab]), "q6ur");
        assert_eq!(encode_bin(&[0x0a]), "Cg");
        assert_eq!(decode_bin(b"Cg"), Ok(vec![0x0a]));
        assert_eq!(decode_bin(b"Cg=="), Ok(vec![0x0a]));
        assert_eq!(decode_bin(b"Cg,AQI"), Ok(vec![0x0a, 0x01, 0x02]));
        assert_eq!(
            decode_bin_values(b"Cg==, AQI"),
            Ok(vec![vec![0x0a], vec![0x01, 0x02]])
        );
        assert_eq!(decode_bin(b"!!"), Err(MetadataError::InvalidBase64));
    }

    #[test]
    fn metadata_keeps_order_and_kinds() {
        let mut md = Metadata::new();
        md.insert("x-a", "1").expect("valid");
        md.append("x-a", "2").expect("valid");
        md.insert_bin("x-b-bin", &[0, 1, 255]).expect("valid");
        assert_eq!(md.get("x-a"), Some("1"));
        assert_eq!(md.get_all("x-a").collect::<Vec<_>>(), ["1", "2"]);
        assert_eq!(md.get_bin("x-b-bin"), Some(Ok(vec![0, 1, 255])));
        assert_eq!(md.get("x-b-bin"), None);
        assert!(md.insert("x-b-bin", "v").is_err());
        assert!(md.insert_bin("x-c", b"v").is_err());
        assert!(md.insert("x-c", "bad\nvalue").is_err());
        assert!(md.insert("Bad", "v").is_err());
        assert_eq!(md.len(), 3);
        let mut out = HeaderMap::new();
        let mut with_reserved = md.clone();
        with_reserved.headers.insert(
            HeaderName::from_static("grpc-status"),
            HeaderValue::from_static("0"),
        );
        with_reserved.write_custom_into(&mut out);
        assert_eq!(out.len(), 3);
        assert!(out.get("grpc-status").is_none());
    }
}
