//! Connection-level errors of the server and client halves (call-level
//! failures are [`Status`](crate::Status) values instead).

/// Why a connection could not be set up or ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The HTTP/2 handshake (preface and SETTINGS exchange) failed.
    #[error("http2 handshake failed: {0}")]
    Handshake(#[source] h2::Error),
    /// The peer did not complete the HTTP/2 handshake in time.
    #[error("http2 handshake timed out after {timeout_ms} ms")]
    HandshakeTimeout {
        /// The configured handshake timeout.
        timeout_ms: u128,
    },
    /// The established HTTP/2 connection failed (I/O error or protocol
    /// error by either side).
    #[error("http2 connection failed: {0}")]
    Connection(#[source] h2::Error),
    /// A keepalive PING went unanswered within the keepalive timeout.
    #[error("keepalive ping unanswered after {timeout_ms} ms")]
    KeepaliveTimeout {
        /// The configured keepalive timeout.
        timeout_ms: u128,
    },
    /// The TLS handshake failed (bad or missing client certificate, no
    /// common protocol version, cipher or ALPN protocol, I/O error).
    #[error("tls handshake failed: {0}")]
    TlsHandshake(#[source] std::io::Error),
    /// The peer abused the connection (a frame flood, a header block never
    /// finished, streams it never read) and was cut off with GOAWAY
    /// ENHANCE_YOUR_CALM.
    #[error("connection cut off: {what}")]
    Abuse {
        /// Which bound the peer exceeded.
        what: &'static str,
    },
    /// Accepting a TCP connection failed.
    #[error("accept failed: {0}")]
    Accept(String),
    /// A configuration value is outside what HTTP/2 or this crate allows.
    #[error("invalid setting {setting}: {reason}")]
    InvalidConfig {
        /// The setting's field name.
        setting: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
    /// The client's `authority` is not a valid URI authority.
    #[error("invalid authority {0:?}")]
    InvalidAuthority(String),
}
