//! Fuzzes the gRPC message framer: arbitrary bytes cut into arbitrary chunks
//! are fed to `MessageDecoder`. Checks that decoding never panics, never
//! returns a body over the limit, does not depend on how the bytes were cut,
//! and that re-framing the decoded messages reproduces the consumed bytes.
#![no_main]

use arbitrary::Arbitrary;
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use shardlog_wire::codec::{self, MessageDecoder, RawMessage};

/// Largest message limit the fuzzer picks: small, so limits are hit often.
const FUZZ_MESSAGE_BYTES_MAX: usize = 4096;

#[derive(Debug, Arbitrary)]
struct Input {
    max_message_bytes: u16,
    /// Chunk lengths; the bytes are cut at these lengths (cycled).
    cuts: Vec<u8>,
    stream: Vec<u8>,
}

/// Outcome of decoding a whole stream: the messages, then how it ended.
#[derive(Debug, PartialEq, Eq)]
struct Decoded {
    messages: Vec<RawMessage>,
    error: Option<String>,
    buffered_bytes: usize,
}

fn decode_all(chunks: impl Iterator<Item = Bytes>, max_message_bytes: usize) -> Decoded {
    let mut decoder = MessageDecoder::new(max_message_bytes);
    let mut messages = Vec::new();
    for chunk in chunks {
        decoder.push(chunk);
        loop {
            match decoder.decode() {
                Ok(Some(message)) => {
                    assert!(
                        message.body.len() <= max_message_bytes,
                        "body over the limit"
                    );
                    messages.push(message);
                }
                Ok(None) => break,
                Err(error) => {
                    return Decoded {
                        messages,
                        error: Some(error.to_string()),
                        buffered_bytes: decoder.buffered_bytes(),
                    };
                }
            }
        }
    }
    let error = decoder.finish().err().map(|e| e.to_string());
    Decoded {
        messages,
        error,
        buffered_bytes: decoder.buffered_bytes(),
    }
}

fn chunked(stream: &[u8], cuts: &[u8]) -> Vec<Bytes> {
    let whole = Bytes::copy_from_slice(stream);
    let mut chunks = Vec::new();
    let mut offset = 0;
    let mut cut = cuts.iter().cycle();
    while offset < whole.len() {
        let length = cut.next().map_or(whole.len(), |n| usize::from(*n).max(1));
        let end = (offset + length).min(whole.len());
        chunks.push(whole.slice(offset..end));
        offset = end;
    }
    chunks
}

fuzz_target!(|input: Input| {
    let max_message_bytes = usize::from(input.max_message_bytes) % (FUZZ_MESSAGE_BYTES_MAX + 1);
    let whole = decode_all(
        std::iter::once(Bytes::copy_from_slice(&input.stream)),
        max_message_bytes,
    );
    let pieces = decode_all(
        chunked(&input.stream, &input.cuts).into_iter(),
        max_message_bytes,
    );
    assert_eq!(
        whole.messages, pieces.messages,
        "result depends on chunking"
    );
    assert_eq!(
        whole.error.is_some(),
        pieces.error.is_some(),
        "error depends on chunking"
    );

    let mut reframed = BytesMut::new();
    for message in &whole.messages {
        codec::encode_raw(message.compressed, &message.body, &mut reframed);
    }
    assert_eq!(
        &reframed[..],
        &input.stream[..reframed.len()],
        "re-framing differs"
    );
    if whole.error.is_none() {
        assert_eq!(
            reframed.len(),
            input.stream.len(),
            "clean end left bytes behind"
        );
    }
});
