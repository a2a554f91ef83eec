//! gRPC message framing: each message is a 1-byte compressed flag, a 4-byte
//! big-endian length and the body. Messages may span DATA frames or share
//! one; zero-length messages are legal.
//!
//! Everything here is pure and transport-free (fuzzed and benchmarked on its
//! own). Decoding is zero-copy when a message lies within one received chunk
//! (the body is a slice of that chunk's `Bytes`); a message spanning chunks is
//! copied once into a buffer of exactly its length. An over-limit message is
//! rejected from its 5-byte prefix, before any of its body is buffered.
//!
//! ```text
//! +------------+---------------------+------------------+
//! | flag (u8)  | length (u32 BE)     | body (length)    |
//! | 0: plain   |                     |                  |
//! | 1: encoded |                     |                  |
//! +------------+---------------------+------------------+
//! ```

use std::collections::VecDeque;
use std::io::{Read, Write};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::status::{Code, Status};

/// Bytes of the prefix before every message body: flag + length.
pub const HEADER_BYTES: usize = 5;

/// Default limit on one message's body, sent or received (4 MiB, as grpc).
pub const MESSAGE_BYTES_MAX_DEFAULT: usize = 4 * 1024 * 1024;

/// A message body as framed, before decompression and protobuf decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    /// The compressed flag: the body is encoded with the call's `grpc-encoding`.
    pub compressed: bool,
    /// The body (a slice of the received bytes when it did not span chunks).
    pub body: Bytes,
}

/// Why framing, compression or protobuf decoding of a message failed.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The length prefix announces more than the configured maximum.
    #[error("message of {length_bytes} bytes exceeds the limit of {max_bytes} bytes")]
    TooLarge {
        /// Length announced by the prefix (or reached while decompressing).
        length_bytes: u64,
        /// The configured limit.
        max_bytes: usize,
    },
    /// The flag byte is neither 0 nor 1.
    #[error("invalid compressed flag {0:#04x}")]
    InvalidCompressedFlag(u8),
    /// The stream ended in the middle of a message.
    #[error("stream ended inside a message ({buffered_bytes} bytes buffered)")]
    Truncated {
        /// Bytes of the incomplete message received.
        buffered_bytes: usize,
    },
    /// The flag says compressed but the call has no `grpc-encoding`.
    #[error("compressed message without a grpc-encoding")]
    CompressedWithoutEncoding,
    /// The gzip body could not be decompressed.
    #[error("gzip decompression failed: {0}")]
    Decompress(#[source] std::io::Error),
    /// Compressing a message failed.
    #[error("gzip compression failed: {0}")]
    Compress(#[source] std::io::Error),
    /// The body is not a valid protobuf message of the expected type.
    #[error("invalid protobuf message: {0}")]
    Decode(#[from] prost::DecodeError),
}

impl CodecError {
    /// The status a peer gets for this error: RESOURCE_EXHAUSTED for size
    /// limits, INTERNAL for everything else (statuscodes.md).
    pub fn to_status(&self) -> Status {
        let code = match self {
            CodecError::TooLarge { .. } => Code::RESOURCE_EXHAUSTED,
            _ => Code::INTERNAL,
        };
        Status::new(code, self.to_string())
    }
}

/// Message compression named by `grpc-encoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    /// No compression (`identity`).
    #[default]
    Identity,
    /// gzip (RFC 1952) via `flate2`.
    Gzip,
}

/// Value of `grpc-accept-encoding` this crate sends: what it can decode.
pub const ACCEPT_ENCODING: &str = "gzip";

impl Encoding {
    /// Parses a `grpc-encoding` value; `None` for unsupported encodings.
    pub fn from_header(value: &[u8]) -> Option<Encoding> {
        match value {
            b"identity" => Some(Encoding::Identity),
            b"gzip" => Some(Encoding::Gzip),
            _ => None,
        }
    }

    /// The header token.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Identity => "identity",
            Encoding::Gzip => "gzip",
        }
    }

    /// Whether a `grpc-accept-encoding` list (comma separated) names `self`.
    /// Identity is always accepted.
    pub fn is_accepted_by(self, accept_encoding: &[u8]) -> bool {
        self == Encoding::Identity
            || accept_encoding
                .split(|b| *b == b',')
                .any(|token| token.trim_ascii() == self.as_str().as_bytes())
    }
}

/// Reassembles length-prefixed messages from received chunks.
///
/// Push chunks as they arrive ([`push`](Self::push)), then call
/// [`decode`](Self::decode) until it returns `Ok(None)`. The caller bounds
/// buffering by pulling the next chunk only when `decode` needs more bytes:
/// then at most one message plus one chunk is held.
#[derive(Debug)]
pub struct MessageDecoder {
    /// Front chunk (kept outside the deque: the common case needs no deque).
    head: Bytes,
    /// Further chunks in arrival order.
    tail: VecDeque<Bytes>,
    /// Bytes in `head` and `tail` together.
    buffered_bytes: usize,
    /// Largest body accepted.
    max_message_bytes: usize,
}

impl MessageDecoder {
    /// A decoder that rejects bodies longer than `max_message_bytes`.
    pub fn new(max_message_bytes: usize) -> MessageDecoder {
        MessageDecoder {
            head: Bytes::new(),
            tail: VecDeque::new(),
            buffered_bytes: 0,
            max_message_bytes,
        }
    }

    /// Adds a received chunk (e.g. one DATA frame's payload).
    pub fn push(&mut self, chunk: Bytes) {
        if chunk.is_empty() {
            return;
        }
        self.buffered_bytes += chunk.len();
        if self.head.is_empty() {
            debug_assert!(self.tail.is_empty());
            self.head = chunk;
        } else {
            self.tail.push_back(chunk);
        }
    }

    /// Bytes received but not yet returned as messages.
    pub fn buffered_bytes(&self) -> usize {
        self.buffered_bytes
    }

    /// The next complete message, `Ok(None)` if more bytes are needed, or an
    /// error as soon as the prefix is invalid or over the limit.
    pub fn decode(&mut self) -> Result<Option<RawMessage>, CodecError> {
        let Some(header) = self.peek_header() else {
            return Ok(None);
        };
        let compressed = match header[0] {
            0 => false,
            1 => true,
            flag => return Err(CodecError::InvalidCompressedFlag(flag)),
        };
        let length_bytes = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        let body_bytes = usize::try_from(length_bytes).unwrap_or(usize::MAX);
        if body_bytes > self.max_message_bytes {
            return Err(CodecError::TooLarge {
                length_bytes: u64::from(length_bytes),
                max_bytes: self.max_message_bytes,
            });
        }
        if self.buffered_bytes - HEADER_BYTES < body_bytes {
            return Ok(None);
        }
        self.skip(HEADER_BYTES);
        let body = self.take(body_bytes);
        Ok(Some(RawMessage { compressed, body }))
    }

    /// Checks that the stream ended on a message boundary.
    pub fn finish(&self) -> Result<(), CodecError> {
        if self.buffered_bytes == 0 {
            Ok(())
        } else {
            Err(CodecError::Truncated {
                buffered_bytes: self.buffered_bytes,
            })
        }
    }

    fn peek_header(&self) -> Option<[u8; HEADER_BYTES]> {
        if self.buffered_bytes < HEADER_BYTES {
            return None;
        }
        let mut header = [0u8; HEADER_BYTES];
        let mut filled = 0;
        for chunk in std::iter::once(&self.head).chain(self.tail.iter()) {
            let n = chunk.len().min(HEADER_BYTES - filled);
            header[filled..filled + n].copy_from_slice(&chunk[..n]);
            filled += n;
            if filled == HEADER_BYTES {
                return Some(header);
            }
        }
        None
    }

    fn skip(&mut self, mut count: usize) {
        assert!(count <= self.buffered_bytes, "skip past the buffered bytes");
        self.buffered_bytes -= count;
        while count > 0 {
            let n = count.min(self.head.len());
            self.head.advance(n);
            count -= n;
            self.refill_head();
        }
        self.refill_head();
    }

    fn take(&mut self, count: usize) -> Bytes {
        assert!(count <= self.buffered_bytes, "take past the buffered bytes");
        if self.head.len() >= count {
            self.buffered_bytes -= count;
            let body = self.head.split_to(count);
            self.refill_head();
            return body;
        }
        let mut body = BytesMut::with_capacity(count);
        while body.len() < count {
            let n = (count - body.len()).min(self.head.len());
            body.extend_from_slice(&self.head[..n]);
            self.head.advance(n);
            self.refill_head();
        }
        self.buffered_bytes -= count;
        body.freeze()
    }

    fn refill_head(&mut self) {
        while self.head.is_empty() {
            match self.tail.pop_front() {
                Some(next) => self.head = next,
                None => return,
            }
        }
    }
}

/// Appends one framed message to `buf`: the prefix then the body as is.
///
/// Panics if `body` is longer than `u32::MAX` bytes (callers enforce the
/// message limit first).
pub fn encode_raw(compressed: bool, body: &[u8], buf: &mut BytesMut) {
    let length = u32::try_from(body.len()).expect("message body fits the u32 length prefix");
    buf.reserve(HEADER_BYTES + body.len());
    buf.put_u8(u8::from(compressed));
    buf.put_u32(length);
    buf.put_slice(body);
}

/// Appends `message` framed and uncompressed to `buf`, encoding the protobuf
/// straight into `buf` (no intermediate buffer).
pub fn encode_message<M: prost::Message>(message: &M, buf: &mut BytesMut) {
    let body_bytes = message.encoded_len();
    let length = u32::try_from(body_bytes).expect("message body fits the u32 length prefix");
    buf.reserve(HEADER_BYTES + body_bytes);
    buf.put_u8(0);
    buf.put_u32(length);
    // Cannot fail: capacity was reserved above.
    message
        .encode(buf)
        .expect("reserved capacity holds the encoded message");
}

/// Appends `message` framed with `encoding` to `buf`.
pub fn encode_message_with<M: prost::Message>(
    message: &M,
    encoding: Encoding,
    buf: &mut BytesMut,
) -> Result<(), CodecError> {
    match encoding {
        Encoding::Identity => {
            encode_message(message, buf);
            Ok(())
        }
        Encoding::Gzip => {
            let plain = message.encode_to_vec();
            let start = buf.len();
            buf.put_u8(1);
            buf.put_u32(0);
            let mut encoder =
                flate2::write::GzEncoder::new(buf.writer(), flate2::Compression::fast());
            encoder.write_all(&plain).map_err(CodecError::Compress)?;
            let buf = encoder.finish().map_err(CodecError::Compress)?.into_inner();
            let body_bytes = buf.len() - start - HEADER_BYTES;
            let length = u32::try_from(body_bytes).map_err(|_| CodecError::TooLarge {
                length_bytes: body_bytes as u64,
                max_bytes: u32::MAX as usize,
            })?;
            buf[start + 1..start + HEADER_BYTES].copy_from_slice(&length.to_be_bytes());
            Ok(())
        }
    }
}

/// Decompresses a gzip body, refusing to inflate beyond `max_message_bytes`
/// (a small compressed message must not become a huge one).
pub fn gunzip(body: &[u8], max_message_bytes: usize) -> Result<Bytes, CodecError> {
    let mut plain = Vec::new();
    let limit = u64::try_from(max_message_bytes)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    flate2::read::GzDecoder::new(body)
        .take(limit)
        .read_to_end(&mut plain)
        .map_err(CodecError::Decompress)?;
    if plain.len() > max_message_bytes {
        return Err(CodecError::TooLarge {
            length_bytes: plain.len() as u64,
            max_bytes: max_message_bytes,
        });
    }
    Ok(Bytes::from(plain))
}

/// Turns a framed message into its plain body, decompressing with the call's
/// `encoding` when the flag says so.
pub fn plain_body(
    raw: RawMessage,
    encoding: Encoding,
    max_message_bytes: usize,
) -> Result<Bytes, CodecError> {
    match (raw.compressed, encoding) {
        (false, _) => Ok(raw.body),
        (true, Encoding::Gzip) => gunzip(&raw.body, max_message_bytes),
        (true, Encoding::Identity) => Err(CodecError::CompressedWithoutEncoding),
    }
}

/// Decodes a protobuf message from a plain body (zero-copy for `bytes`
/// fields, which slice `body`).
pub fn decode_message<M: prost::Message + Default>(body: Bytes) -> Result<M, CodecError> {
    Ok(M::decode(body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoder() -> MessageDecoder {
        MessageDecoder::new(16)
    }

    #[test]
    fn decodes_several_messages_from_one_chunk_zero_copy() {
        let mut d = decoder();
        let chunk =
            Bytes::from_static(b"\x00\x00\x00\x00\x02hi\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01!");
        let base = chunk.as_ptr();
        d.push(chunk);
        let first = d.decode().expect("ok").expect("message");
        assert_eq!(&first.body[..], b"hi");
        assert_eq!(
            first.body.as_ptr(),
            base.wrapping_add(5),
            "sliced, not copied"
        );
        let empty = d.decode().expect("ok").expect("zero-length message");
        assert!(empty.body.is_empty() && !empty.compressed);
        assert_eq!(&d.decode().expect("ok").expect("message").body[..], b"!");
        assert_eq!(d.decode().expect("ok"), None);
        d.finish().expect("ended on a boundary");
    }

    #[test]
    fn reassembles_prefix_and_body_split_across_chunks() {
        let mut d = decoder();
        for piece in [&b"\x01\x00"[..], b"\x00", b"\x00\x03a", b"b", b"c\x00"] {
            d.push(Bytes::copy_from_slice(piece));
        }
        let message = d.decode().expect("ok").expect("message");
        assert!(message.compressed);
        assert_eq!(&message.body[..], b"abc");
        assert_eq!(d.decode().expect("ok"), None);
        assert!(matches!(
            d.finish(),
            Err(CodecError::Truncated { buffered_bytes: 1 })
        ));
    }

    #[test]
    fn rejects_over_limit_from_the_prefix_alone() {
        let mut d = decoder();
        d.push(Bytes::from_static(b"\x00\x00\x00\x00\x11"));
        match d.decode() {
            Err(CodecError::TooLarge {
                length_bytes: 17,
                max_bytes: 16,
            }) => {}
            other => panic!("unexpected {other:?}"),
        }
        let mut d = decoder();
        d.push(Bytes::from_static(b"\x00\xff\xff\xff\xff"));
        assert!(matches!(d.decode(), Err(CodecError::TooLarge { .. })));
        assert_eq!(
            CodecError::TooLarge {
                length_bytes: 17,
                max_bytes: 16
            }
            .to_status()
            .code(),
            Code::RESOURCE_EXHAUSTED
        );
    }

    #[test]
    fn every_split_point_decodes_the_same_messages() {
        let mut stream = BytesMut::new();
        for body in [&b"first"[..], b"", b"third message", b"4"] {
            encode_raw(false, body, &mut stream);
        }
        let stream = stream.freeze();
        for first_cut in 0..=stream.len() {
            for second_cut in first_cut..=stream.len() {
                let mut d = decoder();
                let mut bodies = Vec::new();
                for piece in [
                    stream.slice(..first_cut),
                    stream.slice(first_cut..second_cut),
                    stream.slice(second_cut..),
                ] {
                    d.push(piece);
                    while let Some(message) = d.decode().expect("valid stream") {
                        bodies.push(message.body);
                    }
                }
                d.finish().expect("ended on a boundary");
                assert_eq!(bodies, [&b"first"[..], b"", b"third message", b"4"]);
            }
        }
    }

    #[test]
    fn rejects_invalid_flag() {
        let mut d = decoder();
        d.push(Bytes::from_static(b"\x02\x00\x00\x00\x00"));
        assert!(matches!(
            d.decode(),
            Err(CodecError::InvalidCompressedFlag(2))
        ));
    }

    #[test]
    fn encodes_literal_bytes() {
        let mut buf = BytesMut::new();
        encode_raw(false, b"hi", &mut buf);
        encode_raw(true, b"", &mut buf);
        assert_eq!(&buf[..], b"\x00\x00\x00\x00\x02hi\x01\x00\x00\x00\x00");
        let mut buf = BytesMut::new();
        encode_message(
            &prost_types::Duration {
                seconds: 1,
                nanos: 0,
            },
            &mut buf,
        );
        assert_eq!(&buf[..], b"\x00\x00\x00\x00\x02\x08\x01");
    }

    #[test]
    fn gzip_round_trip_and_inflation_limit() {
        let message = prost_types::Duration {
            seconds: 7,
            nanos: 9,
        };
        let mut buf = BytesMut::new();
        encode_message_with(&message, Encoding::Gzip, &mut buf).expect("compresses");
        let mut d = MessageDecoder::new(1024);
        d.push(buf.freeze());
        let raw = d.decode().expect("ok").expect("message");
        assert!(raw.compressed);
        let body = plain_body(raw.clone(), Encoding::Gzip, 1024).expect("inflates");
        let back: prost_types::Duration = decode_message(body).expect("decodes");
        assert_eq!(back, message);
        assert!(matches!(
            plain_body(raw.clone(), Encoding::Identity, 1024),
            Err(CodecError::CompressedWithoutEncoding)
        ));
        assert!(matches!(
            plain_body(raw, Encoding::Gzip, 2),
            Err(CodecError::TooLarge { .. })
        ));
    }

    #[test]
    fn encoding_negotiation_tokens() {
        assert_eq!(Encoding::from_header(b"gzip"), Some(Encoding::Gzip));
        assert_eq!(Encoding::from_header(b"snappy"), None);
        assert!(Encoding::Gzip.is_accepted_by(b"identity, gzip"));
        assert!(!Encoding::Gzip.is_accepted_by(b"deflate"));
        assert!(Encoding::Identity.is_accepted_by(b""));
    }
}
