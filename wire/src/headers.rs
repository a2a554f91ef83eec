//! Building and reading the HTTP/2 header blocks of gRPC: response headers,
//! trailers (`grpc-status`, percent-encoded `grpc-message`), Trailers-Only
//! responses, and the status carried in a received block.

use http::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};

use crate::codec::{ACCEPT_ENCODING, Encoding};
use crate::metadata::{Metadata, decode_grpc_message, encode_grpc_message};
use crate::status::{Code, Status};

/// `content-type` of every gRPC message this crate sends.
pub const CONTENT_TYPE_GRPC: &str = "application/grpc";
/// `grpc-status` header name.
pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// `grpc-message` header name.
pub const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
/// `grpc-encoding` header name.
pub const GRPC_ENCODING: HeaderName = HeaderName::from_static("grpc-encoding");
/// `grpc-accept-encoding` header name.
pub const GRPC_ACCEPT_ENCODING: HeaderName = HeaderName::from_static("grpc-accept-encoding");
/// `grpc-timeout` header name.
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// Whether a `content-type` value is gRPC (`application/grpc` optionally
/// followed by `+proto`, `+json`, `;...`).
pub fn is_grpc_content_type(value: &[u8]) -> bool {
    const PREFIX: &[u8] = CONTENT_TYPE_GRPC.as_bytes();
    value.len() >= PREFIX.len()
        && value[..PREFIX.len()].eq_ignore_ascii_case(PREFIX)
        && matches!(value.get(PREFIX.len()), None | Some(b'+' | b';'))
}

fn status_value(code: Code) -> HeaderValue {
    match code.0 {
        0 => HeaderValue::from_static("0"),
        other => HeaderValue::from(other),
    }
}

/// Response headers (`:status 200`, content-type, encodings, metadata).
pub(crate) fn response_head(encoding: Encoding, metadata: Metadata) -> http::Response<()> {
    let mut response = http::Response::new(());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_GRPC));
    if encoding != Encoding::Identity {
        headers.insert(GRPC_ENCODING, HeaderValue::from_static(encoding.as_str()));
        headers.insert(
            GRPC_ACCEPT_ENCODING,
            HeaderValue::from_static(ACCEPT_ENCODING),
        );
    }
    if !metadata.is_empty() {
        metadata.write_custom_into(headers);
    }
    response
}

/// Writes `grpc-status`, `grpc-message` (if any) and the status's and the
/// extra metadata into `headers`.
fn write_status(status: Status, extra: Metadata, headers: &mut HeaderMap) {
    let (code, message, metadata) = status.into_parts();
    headers.insert(GRPC_STATUS, status_value(code));
    if !message.is_empty() {
        let encoded = encode_grpc_message(&message);
        // Percent-encoding leaves only 0x20..=0x7E: always a valid value.
        if let Ok(value) = HeaderValue::from_maybe_shared(bytes::Bytes::from(encoded)) {
            headers.insert(GRPC_MESSAGE, value);
        }
    }
    if !extra.is_empty() {
        extra.write_custom_into(headers);
    }
    if !metadata.is_empty() {
        metadata.write_custom_into(headers);
    }
}

/// Trailers ending a response: status plus trailing metadata.
pub(crate) fn trailers(status: Status, extra: Metadata) -> HeaderMap {
    let mut headers = HeaderMap::new();
    write_status(status, extra, &mut headers);
    headers
}

/// Trailers of a successful call: `grpc-status: 0` plus trailing metadata
/// (no `Status` is built: the success path allocates only the map).
pub(crate) fn ok_trailers(extra: Metadata) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(1 + extra.len());
    headers.insert(GRPC_STATUS, HeaderValue::from_static("0"));
    if !extra.is_empty() {
        extra.write_custom_into(&mut headers);
    }
    headers
}

/// A Trailers-Only response: one HEADERS frame with END_STREAM carrying
/// `:status 200`, content-type and the status.
pub(crate) fn trailers_only(status: Status, extra: Metadata) -> http::Response<()> {
    let mut response = http::Response::new(());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_GRPC));
    write_status(status, extra, headers);
    response
}

/// The status a received header block carries, if it has `grpc-status`.
pub fn status_from_trailers(headers: &HeaderMap) -> Option<Status> {
    let code = Code::from_header(headers.get(&GRPC_STATUS)?.as_bytes());
    let message = headers
        .get(&GRPC_MESSAGE)
        .map(|value| decode_grpc_message(value.as_bytes()))
        .unwrap_or_default();
    Some(Status::new(code, message))
}

/// The gRPC code for a non-200 HTTP status (http-grpc-status-mapping.md).
pub fn code_from_http_status(status: http::StatusCode) -> Code {
    match status.as_u16() {
        400 => Code::INTERNAL,
        401 => Code::UNAUTHENTICATED,
        403 => Code::PERMISSION_DENIED,
        404 => Code::UNIMPLEMENTED,
        429 | 502..=504 => Code::UNAVAILABLE,
        _ => Code::UNKNOWN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_type_variants() {
        assert!(is_grpc_content_type(b"application/grpc"));
        assert!(is_grpc_content_type(b"application/grpc+proto"));
        assert!(is_grpc_content_type(b"application/grpc;charset=utf-8"));
        assert!(!is_grpc_content_type(b"application/grpcx"));
        assert!(!is_grpc_content_type(b"application/json"));
    }

    #[test]
    fn trailers_round_trip_status_and_metadata() {
        let mut status = Status::new(Code::NOT_FOUND, "no such topic: ☺ 100%\n");
        status
            .metadata_mut()
            .insert("x-why", "gone")
            .expect("valid");
        let map = trailers(status.clone(), Metadata::new());
        assert_eq!(map.get("grpc-status").expect("status"), "5");
        assert_eq!(
            map.get("grpc-message").expect("message"),
            "no such topic: %E2%98%BA 100%25%0A"
        );
        assert_eq!(map.get("x-why").expect("metadata"), "gone");
        let back = status_from_trailers(&map).expect("has status");
        assert_eq!(back.code(), Code::NOT_FOUND);
        assert_eq!(back.message(), status.message());
        let ok = ok_trailers(Metadata::new());
        assert_eq!(ok, trailers(Status::ok(), Metadata::new()));
        assert_eq!(ok.get("grpc-status").expect("status"), "0");
        assert!(ok.get("grpc-message").is_none());
    }

    #[test]
    fn trailers_only_has_content_type_and_status() {
        let head = trailers_only(Status::unimplemented("nope"), Metadata::new());
        assert_eq!(head.status(), http::StatusCode::OK);
        assert_eq!(
            head.headers().get("content-type").expect("ct"),
            "application/grpc"
        );
        assert_eq!(head.headers().get("grpc-status").expect("status"), "12");
    }
}
