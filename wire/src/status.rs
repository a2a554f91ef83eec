//! gRPC status: the `grpc-status` code (a newtype so unknown codes survive a
//! round trip), the human-readable `grpc-message`, and trailing metadata.

use std::fmt;

use crate::metadata::Metadata;

/// A gRPC status code as carried in `grpc-status`.
///
/// A newtype over `i32` rather than an enum so that codes this crate does not
/// know still round-trip unchanged (statuscodes.md allows new codes).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Code(pub i32);

impl Code {
    /// Not an error; returned on success.
    pub const OK: Code = Code(0);
    /// The operation was cancelled, typically by the caller.
    pub const CANCELLED: Code = Code(1);
    /// Unknown error, e.g. a handler panic.
    pub const UNKNOWN: Code = Code(2);
    /// The client specified an invalid argument.
    pub const INVALID_ARGUMENT: Code = Code(3);
    /// The deadline expired before the operation could complete.
    pub const DEADLINE_EXCEEDED: Code = Code(4);
    /// Some requested entity was not found.
    pub const NOT_FOUND: Code = Code(5);
    /// The entity that a client attempted to create already exists.
    pub const ALREADY_EXISTS: Code = Code(6);
    /// The caller does not have permission to execute the operation.
    pub const PERMISSION_DENIED: Code = Code(7);
    /// Some resource (message size, quota, memory) has been exhausted.
    pub const RESOURCE_EXHAUSTED: Code = Code(8);
    /// The system is not in a state required for the operation.
    pub const FAILED_PRECONDITION: Code = Code(9);
    /// The operation was aborted, e.g. by a concurrency conflict.
    pub const ABORTED: Code = Code(10);
    /// The operation was attempted past the valid range.
    pub const OUT_OF_RANGE: Code = Code(11);
    /// The operation (service, method, encoding, cardinality) is not implemented.
    pub const UNIMPLEMENTED: Code = Code(12);
    /// Internal error: an invariant the system expects is broken.
    pub const INTERNAL: Code = Code(13);
    /// The service is currently unavailable (retryable), e.g. shutting down.
    pub const UNAVAILABLE: Code = Code(14);
    /// Unrecoverable data loss or corruption.
    pub const DATA_LOSS: Code = Code(15);
    /// The request lacks valid authentication credentials.
    pub const UNAUTHENTICATED: Code = Code(16);

    /// The canonical upper-case name, or `"CODE(n)"`-less `None` for unknown codes.
    pub fn name(self) -> Option<&'static str> {
        const NAMES: [&str; 17] = [
            "OK",
            "CANCELLED",
            "UNKNOWN",
            "INVALID_ARGUMENT",
            "DEADLINE_EXCEEDED",
            "NOT_FOUND",
            "ALREADY_EXISTS",
            "PERMISSION_DENIED",
            "RESOURCE_EXHAUSTED",
            "FAILED_PRECONDITION",
            "ABORTED",
            "OUT_OF_RANGE",
            "UNIMPLEMENTED",
            "INTERNAL",
            "UNAVAILABLE",
            "DATA_LOSS",
            "UNAUTHENTICATED",
        ];
        usize::try_from(self.0)
            .ok()
            .and_then(|i| NAMES.get(i).copied())
    }

    /// Parses a `grpc-status` header value (ASCII decimal). Values that are not
    /// a decimal `i32` map to UNKNOWN, as statuscodes.md asks of clients.
    pub fn from_header(value: &[u8]) -> Code {
        std::str::from_utf8(value)
            .ok()
            .and_then(|s| s.parse::<i32>().ok())
            .map_or(Code::UNKNOWN, Code)
    }
}

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "Code({})", self.0),
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The outcome of a call: a code, a message and trailing metadata.
///
/// Handlers return it as their error; the server writes it as the
/// `grpc-status` / `grpc-message` trailers (plus the metadata). On the client
/// it is what the server's trailers said, or a locally generated status.
///
/// One pointer wide (the parts are boxed) so `Result<T, Status>` stays small
/// on the success path.
#[derive(Clone, PartialEq, Eq)]
pub struct Status {
    inner: Box<StatusInner>,
}

#[derive(Clone, PartialEq, Eq)]
struct StatusInner {
    code: Code,
    message: String,
    metadata: Metadata,
    /// Generated locally because the connection itself failed.
    connection_lost: bool,
}

macro_rules! status_constructors {
    ($($(#[$doc:meta])* $name:ident => $code:ident,)*) => {
        $(
            $(#[$doc])*
            pub fn $name(message: impl Into<String>) -> Status {
                Status::new(Code::$code, message)
            }
        )*
    };
}

impl Status {
    /// A status with `code` and `message` and no trailing metadata.
    pub fn new(code: Code, message: impl Into<String>) -> Status {
        Status {
            inner: Box::new(StatusInner {
                code,
                message: message.into(),
                metadata: Metadata::new(),
                connection_lost: false,
            }),
        }
    }

    /// The OK status (empty message).
    pub fn ok() -> Status {
        Status::new(Code::OK, String::new())
    }

    status_constructors! {
        /// CANCELLED with `message`.
        cancelled => CANCELLED,
        /// UNKNOWN with `message`.
        unknown => UNKNOWN,
        /// INVALID_ARGUMENT with `message`.
        invalid_argument => INVALID_ARGUMENT,
        /// DEADLINE_EXCEEDED with `message`.
        deadline_exceeded => DEADLINE_EXCEEDED,
        /// NOT_FOUND with `message`.
        not_found => NOT_FOUND,
        /// ALREADY_EXISTS with `message`.
        already_exists => ALREADY_EXISTS,
        /// PERMISSION_DENIED with `message`.
        permission_denied => PERMISSION_DENIED,
        /// RESOURCE_EXHAUSTED with `message`.
        resource_exhausted => RESOURCE_EXHAUSTED,
        /// FAILED_PRECONDITION with `message`.
        failed_precondition => FAILED_PRECONDITION,
        /// ABORTED with `message`.
        aborted => ABORTED,
        /// OUT_OF_RANGE with `message`.
        out_of_range => OUT_OF_RANGE,
        /// UNIMPLEMENTED with `message`.
        unimplemented => UNIMPLEMENTED,
        /// INTERNAL with `message`.
        internal => INTERNAL,
        /// UNAVAILABLE with `message`.
        unavailable => UNAVAILABLE,
        /// DATA_LOSS with `message`.
        data_loss => DATA_LOSS,
        /// UNAUTHENTICATED with `message`.
        unauthenticated => UNAUTHENTICATED,
    }

    /// The status code.
    pub fn code(&self) -> Code {
        self.inner.code
    }

    /// The status message (decoded from `grpc-message`; any Unicode).
    pub fn message(&self) -> &str {
        &self.inner.message
    }

    /// Whether this status was generated locally because the HTTP/2
    /// connection failed (an I/O error or GOAWAY): the connection is
    /// unusable. A status the peer sent in its trailers never is, whatever
    /// its code (a server's UNAVAILABLE "overloaded" keeps the connection).
    pub fn connection_lost(&self) -> bool {
        self.inner.connection_lost
    }

    /// Builder-style: marks the status as caused by a failed connection.
    pub(crate) fn with_connection_lost(mut self) -> Status {
        self.inner.connection_lost = true;
        self
    }

    /// Trailing metadata sent with (or received with) this status.
    pub fn metadata(&self) -> &Metadata {
        &self.inner.metadata
    }

    /// Mutable trailing metadata, e.g. to attach details before returning.
    pub fn metadata_mut(&mut self) -> &mut Metadata {
        &mut self.inner.metadata
    }

    /// Builder-style: replaces the trailing metadata.
    pub fn with_metadata(mut self, metadata: Metadata) -> Status {
        self.inner.metadata = metadata;
        self
    }

    /// Splits into code, message and metadata.
    pub fn into_parts(self) -> (Code, String, Metadata) {
        let inner = *self.inner;
        (inner.code, inner.message, inner.metadata)
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Status")
            .field("code", &self.inner.code)
            .field("message", &self.inner.message)
            .field("metadata", &self.inner.metadata)
            .finish()
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.inner.code, self.inner.message)
    }
}

impl std::error::Error for Status {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_names_and_unknown_codes_survive() {
        assert_eq!(Code::UNAUTHENTICATED.name(), Some("UNAUTHENTICATED"));
        assert_eq!(Code(99).name(), None);
        assert_eq!(format!("{:?}", Code(99)), "Code(99)");
        assert_eq!(Code::from_header(b"14"), Code::UNAVAILABLE);
        assert_eq!(Code::from_header(b"99"), Code(99));
        assert_eq!(Code::from_header(b"x"), Code::UNKNOWN);
    }
}
