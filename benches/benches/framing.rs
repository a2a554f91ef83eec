//! gRPC message framing (shardlog-wire's codec): encode and decode of a
//! small (100-byte payload) and a large (1 MiB payload) `SimpleRequest`,
//! plain and gzip. Decoding feeds the frame in 16 KiB chunks, as DATA frames
//! arrive, so the large case includes reassembly.

use bytes::{Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use shardlog_wire::codec::{self, Encoding, MessageDecoder};
use shardlog_wire::proto::grpc::testing::{Payload, SimpleRequest};

/// DATA frame payload size the decoder is fed in (h2's default max frame).
const CHUNK_BYTES: usize = 16 * 1024;
/// Message limit for the decoder (the server default).
const MESSAGE_BYTES_MAX: usize = codec::MESSAGE_BYTES_MAX_DEFAULT;

/// Compressible but not trivial bytes (a small LCG over a text alphabet), so
/// gzip does real work.
fn payload_bytes(size: usize) -> Bytes {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz ,.0123456789";
    let mut state: u32 = 0x2545_f491;
    let bytes: Vec<u8> = (0..size)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            ALPHABET[(state >> 24) as usize % ALPHABET.len()]
        })
        .collect();
    Bytes::from(bytes)
}

fn request(size: usize) -> SimpleRequest {
    SimpleRequest {
        response_size: 1,
        payload: Some(Payload {
            r#type: 0,
            body: payload_bytes(size),
        }),
        ..SimpleRequest::default()
    }
}

fn frame(message: &SimpleRequest, encoding: Encoding) -> Bytes {
    let mut buf = BytesMut::new();
    codec::encode_message_with(message, encoding, &mut buf).expect("encodes");
    buf.freeze()
}

/// Decodes one framed message fed in `CHUNK_BYTES` chunks.
fn decode(frame: &Bytes, encoding: Encoding) -> SimpleRequest {
    let mut decoder = MessageDecoder::new(MESSAGE_BYTES_MAX);
    let mut offset = 0;
    loop {
        if let Some(raw) = decoder.decode().expect("valid frame") {
            let body = codec::plain_body(raw, encoding, MESSAGE_BYTES_MAX).expect("plain body");
            return codec::decode_message(body).expect("valid protobuf");
        }
        let end = (offset + CHUNK_BYTES).min(frame.len());
        assert!(end > offset, "frame ended before its message");
        decoder.push(frame.slice(offset..end));
        offset = end;
    }
}

fn cases() -> Vec<(&'static str, SimpleRequest, Encoding)> {
    let small = request(100);
    let large = request(1024 * 1024);
    vec![
        ("small/identity", small.clone(), Encoding::Identity),
        ("small/gzip", small, Encoding::Gzip),
        ("1MiB/identity", large.clone(), Encoding::Identity),
        ("1MiB/gzip", large, Encoding::Gzip),
    ]
}

fn bench_encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("framing/encode");
    for (name, message, encoding) in cases() {
        group.throughput(Throughput::Bytes(
            frame(&message, Encoding::Identity).len() as u64
        ));
        group.bench_with_input(BenchmarkId::from_parameter(name), &message, |b, message| {
            b.iter(|| frame(message, encoding));
        });
    }
    group.finish();
}

fn bench_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("framing/decode");
    for (name, message, encoding) in cases() {
        let framed = frame(&message, encoding);
        assert_eq!(decode(&framed, encoding), message, "round trip");
        group.throughput(Throughput::Bytes(
            frame(&message, Encoding::Identity).len() as u64
        ));
        group.bench_with_input(BenchmarkId::from_parameter(name), &framed, |b, framed| {
            b.iter(|| decode(framed, encoding));
        });
    }
    group.finish();
}

criterion_group!(benches, bench_encode, bench_decode);
criterion_main!(benches);
