//! An inbound HTTP/2 frame watcher between the socket and h2, for the
//! abuse h2 does not bound itself.
//!
//! It reads only the 9-byte frame headers of the bytes passing through
//! (payloads are skipped, nothing is copied) and tracks:
//! - frames that cost the server work but carry no request data (empty
//!   DATA without END_STREAM, PING, SETTINGS, PRIORITY), counted per
//!   one-second window: a flood of them stops the connection;
//! - since when a request header block is incomplete (a frame header or a
//!   HEADERS/CONTINUATION frame half received, or HEADERS without
//!   END_HEADERS): the driver's request-header timer reads it, so bytes
//!   trickled one at a time never look like progress.
//!
//! On a flood the watcher stops handing bytes to h2 and records why; the
//! connection driver then sends GOAWAY ENHANCE_YOUR_CALM and closes.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// The client connection preface (RFC 9113, 3.4), skipped before frames.
const PREFACE_BYTES: usize = 24;
/// Every frame starts with a 9-byte header (RFC 9113, 4.1).
const FRAME_HEADER_BYTES: usize = 9;
/// Length of the window over which no-op frames are counted.
pub(crate) const NOOP_WINDOW: Duration = Duration::from_secs(1);

const FRAME_DATA: u8 = 0x0;
const FRAME_HEADERS: u8 = 0x1;
const FRAME_PRIORITY: u8 = 0x2;
const FRAME_SETTINGS: u8 = 0x4;
const FRAME_PING: u8 = 0x6;
const FRAME_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_ACK: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;

/// What the watcher shares with the connection driver.
#[derive(Debug, Default)]
pub(crate) struct GuardState {
    /// Set when the peer exceeded a bound; reads stop from then on.
    flood: Cell<Option<Flood>>,
    /// When the current incomplete request header block began.
    header_block_since: Cell<Option<Instant>>,
}

impl GuardState {
    /// The flood that stopped the connection, if one did.
    pub(crate) fn flood(&self) -> Option<Flood> {
        self.flood.get()
    }

    /// Since when a request header block is incomplete, if one is.
    pub(crate) fn header_block_since(&self) -> Option<Instant> {
        self.header_block_since.get()
    }
}

/// A frame flood the watcher cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Flood {
    /// No-op frames seen in one window.
    pub(crate) noop_frames: u32,
}

/// Where the parser stands in the inbound byte stream.
#[derive(Debug)]
struct FrameParser {
    preface_left: usize,
    header: [u8; FRAME_HEADER_BYTES],
    header_filled: usize,
    /// Payload bytes of the current frame still to skip.
    payload_left: usize,
    /// Whether the current frame is part of a header block.
    payload_is_header_block: bool,
    /// HEADERS seen without END_HEADERS: CONTINUATION frames must follow.
    awaiting_continuation: bool,
    noop_window_start: Option<Instant>,
    noop_frames: u32,
}

impl FrameParser {
    fn new() -> FrameParser {
        FrameParser {
            preface_left: PREFACE_BYTES,
            header: [0; FRAME_HEADER_BYTES],
            header_filled: 0,
            payload_left: 0,
            payload_is_header_block: false,
            awaiting_continuation: false,
            noop_window_start: None,
            noop_frames: 0,
        }
    }

    /// Walks `bytes`; returns the no-op frame headers it completed.
    fn scan(&mut self, mut bytes: &[u8]) -> u32 {
        let mut noop_frames = 0;
        let skip = self.preface_left.min(bytes.len());
        self.preface_left -= skip;
        bytes = &bytes[skip..];
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let skip = self.payload_left.min(bytes.len());
                self.payload_left -= skip;
                bytes = &bytes[skip..];
                continue;
            }
            let take = (FRAME_HEADER_BYTES - self.header_filled).min(bytes.len());
            self.header[self.header_filled..self.header_filled + take]
                .copy_from_slice(&bytes[..take]);
            self.header_filled += take;
            bytes = &bytes[take..];
            if self.header_filled == FRAME_HEADER_BYTES {
                self.header_filled = 0;
                noop_frames += u32::from(self.on_frame_header());
            }
        }
        noop_frames
    }

    /// Takes in a complete frame header; true if the frame is a no-op.
    fn on_frame_header(&mut self) -> bool {
        let [l0, l1, l2, kind, flags, ..] = self.header;
        let length = usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2);
        self.payload_left = length;
        self.payload_is_header_block = matches!(kind, FRAME_HEADERS | FRAME_CONTINUATION);
        if self.payload_is_header_block {
            self.awaiting_continuation = flags & FLAG_END_HEADERS == 0;
        }
        match kind {
            FRAME_DATA => length == 0 && flags & FLAG_END_STREAM == 0,
            FRAME_PING | FRAME_SETTINGS => flags & FLAG_ACK == 0,
            FRAME_PRIORITY => true,
            _ => false,
        }
    }

    /// Whether a request header block is incomplete right now.
    fn in_header_block(&self) -> bool {
        self.header_filled > 0
            || self.awaiting_continuation
            || (self.payload_left > 0 && self.payload_is_header_block)
    }

    /// Adds `noop_frames` to the current window; the window's total.
    fn count_noop(&mut self, noop_frames: u32, now: Instant) -> u32 {
        let window_over = self
            .noop_window_start
            .is_none_or(|start| now.duration_since(start) >= NOOP_WINDOW);
        if window_over {
            self.noop_window_start = Some(now);
            self.noop_frames = 0;
        }
        self.noop_frames = self.noop_frames.saturating_add(noop_frames);
        self.noop_frames
    }
}

/// The socket as h2 sees it: reads pass through the frame parser.
pub(crate) struct FrameGuard<IO> {
    io: IO,
    parser: FrameParser,
    state: Rc<GuardState>,
    max_noop_frames_per_window: u32,
}

impl<IO> FrameGuard<IO> {
    /// Watches `io`, allowing `max_noop_frames_per_window` no-op frames
    /// per [`NOOP_WINDOW`].
    pub(crate) fn new(io: IO, max_noop_frames_per_window: u32) -> (FrameGuard<IO>, Rc<GuardState>) {
        let state = Rc::new(GuardState::default());
        let guard = FrameGuard {
            io,
            parser: FrameParser::new(),
            state: state.clone(),
            max_noop_frames_per_window,
        };
        (guard, state)
    }

    fn observe(&mut self, bytes: &[u8]) {
        let was_in_block = self.parser.in_header_block();
        let noop_frames = self.parser.scan(bytes);
        let in_block = self.parser.in_header_block();
        if noop_frames == 0 && was_in_block == in_block {
            return;
        }
        let now = Instant::now();
        if in_block && !was_in_block {
            self.state.header_block_since.set(Some(now));
        } else if !in_block {
            self.state.header_block_since.set(None);
        }
        if noop_frames > 0 {
            let total = self.parser.count_noop(noop_frames, now);
            if total > self.max_noop_frames_per_window {
                self.state.flood.set(Some(Flood { noop_frames: total }));
            }
        }
    }
}

impl<IO: futures_lite::AsyncRead + Unpin> futures_lite::AsyncRead for FrameGuard<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.state.flood.get().is_some() {
            // The driver closes the connection; h2 gets nothing more.
            return Poll::Pending;
        }
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(n)) = read {
            this.observe(&buf[..n]);
            if this.state.flood.get().is_some() {
                // Let the driver see the flood on its next poll.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
        read
    }
}

impl<IO: futures_lite::AsyncWrite + Unpin> futures_lite::AsyncWrite for FrameGuard<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload_bytes: usize) -> Vec<u8> {
        let [_, l0, l1, l2] = (payload_bytes as u32).to_be_bytes();
        let mut bytes = vec![l0, l1, l2, kind, flags, 0, 0, 0, 1];
        bytes.resize(FRAME_HEADER_BYTES + payload_bytes, 0xAB);
        bytes
    }

    #[test]
    fn counts_noop_frames_and_skips_payloads() {
        let mut parser = FrameParser::new();
        let mut bytes = vec![b'P'; PREFACE_BYTES];
        bytes.extend(frame(FRAME_SETTINGS, 0, 12));
        bytes.extend(frame(FRAME_SETTINGS, FLAG_ACK, 0));
        bytes.extend(frame(FRAME_DATA, 0, 0));
        bytes.extend(frame(FRAME_DATA, FLAG_END_STREAM, 0));
        // A payload that looks like frame headers is skipped, not parsed.
        bytes.extend(frame(FRAME_DATA, 0, 100));
        bytes.extend(frame(FRAME_PING, 0, 8));
        bytes.extend(frame(FRAME_PING, FLAG_ACK, 8));
        bytes.extend(frame(FRAME_PRIORITY, 0, 5));
        // One byte at a time gives the same count as one read.
        let one_read = FrameParser::new().scan(&bytes);
        let trickled: u32 = bytes.chunks(1).map(|byte| parser.scan(byte)).sum();
        assert_eq!(one_read, 4, "SETTINGS, empty DATA, PING, PRIORITY");
        assert_eq!(trickled, one_read);
        assert!(!parser.in_header_block());
    }

    #[test]
    fn tracks_incomplete_header_blocks() {
        let mut parser = FrameParser::new();
        parser.scan(&[0; PREFACE_BYTES]);
        let headers = frame(FRAME_HEADERS, 0, 10);
        parser.scan(&headers[..3]);
        assert!(parser.in_header_block(), "half a frame header");
        parser.scan(&headers[3..12]);
        assert!(parser.in_header_block(), "half a HEADERS payload");
        parser.scan(&headers[12..]);
        assert!(parser.in_header_block(), "no END_HEADERS yet");
        parser.scan(&frame(FRAME_CONTINUATION, FLAG_END_HEADERS, 4));
        assert!(!parser.in_header_block());
        parser.scan(&frame(FRAME_DATA, 0, 1));
        assert!(!parser.in_header_block(), "DATA is not a header block");
    }

    #[test]
    fn noop_window_rolls_over() {
        let mut parser = FrameParser::new();
        let start = Instant::now();
        assert_eq!(parser.count_noop(5, start), 5);
        assert_eq!(parser.count_noop(5, start + NOOP_WINDOW / 2), 10);
        assert_eq!(parser.count_noop(1, start + NOOP_WINDOW), 1);
    }
}
