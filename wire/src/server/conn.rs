//! One HTTP/2 connection: handshake under a timeout, then a single task
//! that drives h2 (reads, writes, flow control), runs every call of the
//! connection as a future in a bounded set, and keeps the timers h2 does not
//! have: idle timeout, keepalive PINGs, the drain deadline, the
//! request-header timeout and the close deadline. It also cuts off a peer
//! that abuses the connection (see `guard`): GOAWAY ENHANCE_YOUR_CALM, then
//! close.
//!
//! Calls are polled inside the connection task rather than spawned: their
//! writes and the connection's flush happen in the same poll, so responses
//! of many streams leave in one batched write.

use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::{Either, LocalBoxFuture, poll_fn, select};
use futures_util::stream::{FuturesUnordered, StreamExt as _};
use glommio::timer::Timer;
use h2::server::{Connection, SendResponse};
use h2::{Ping, PingPong, Reason, RecvStream};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt as _};

use crate::call::ConnectionInfo;
use crate::error::WireError;
use crate::event::{Event, EventWait};
use crate::server::ServerShared;
use crate::server::admission::ConnectionPermit;
use crate::server::dispatch::prepare_call;
use crate::server::guard::{FrameGuard, GuardState};

pub(crate) async fn serve_connection<IO>(
    shared: Rc<ServerShared>,
    io: IO,
    connection_info: ConnectionInfo,
    permit: ConnectionPermit,
) -> Result<(), WireError>
where
    IO: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin + 'static,
{
    let handshake_deadline = Instant::now() + shared.config.handshake_timeout;
    serve_h2(shared, io, connection_info, permit, handshake_deadline).await
}

/// Serves a TLS connection: the TLS handshake and then the HTTP/2 one must
/// both finish by one handshake deadline, and the connection counts
/// against the connection bounds (`permit`) from the moment it was
/// accepted. A drain that starts during the TLS handshake ends it at once.
pub(crate) async fn serve_tls_connection(
    shared: Rc<ServerShared>,
    stream: glommio::net::TcpStream,
    acceptor: futures_rustls::TlsAcceptor,
    peer_addr: Option<std::net::SocketAddr>,
    permit: ConnectionPermit,
) -> Result<(), WireError> {
    let handshake_timeout = shared.config.handshake_timeout;
    let handshake_deadline = Instant::now() + handshake_timeout;
    let drain = EventWait::new(shared.drain.clone());
    let give_up = select(Timer::new(handshake_timeout), drain);
    let tls = match select(acceptor.accept(stream), give_up).await {
        Either::Left((result, _)) => result.map_err(WireError::TlsHandshake)?,
        Either::Right((Either::Left(_), _)) => {
            return Err(WireError::HandshakeTimeout {
                timeout_ms: handshake_timeout.as_millis(),
            });
        }
        Either::Right((Either::Right(_), _)) => return Ok(()),
    };
    let tls_principal = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(crate::tls::certificate_principal)
        .map(Rc::from);
    let info = ConnectionInfo {
        peer_addr,
        tls: true,
        tls_principal,
    };
    serve_h2(shared, tls, info, permit, handshake_deadline).await
}

/// The HTTP/2 handshake (by `handshake_deadline`) behind the frame guard,
/// then the connection's driver until it closes.
async fn serve_h2<IO>(
    shared: Rc<ServerShared>,
    io: IO,
    connection_info: ConnectionInfo,
    permit: ConnectionPermit,
    handshake_deadline: Instant,
) -> Result<(), WireError>
where
    IO: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin + 'static,
{
    // Declared first, dropped last: the count falls once the connection is gone.
    let _permit = permit;
    let handshake_timeout = shared.config.handshake_timeout;
    let (io, guard) = FrameGuard::new(io, shared.config.max_noop_frames_per_second);
    let mut handshake = std::pin::pin!(shared.h2_builder.handshake::<_, Bytes>(io.compat()));
    // A flood during the handshake stops the reads: end at once, not at the timeout.
    let handshake = poll_fn(|cx| {
        if guard.flood().is_some() {
            return Poll::Ready(Err(WireError::Abuse { what: FLOOD }));
        }
        handshake.as_mut().poll(cx).map_err(WireError::Handshake)
    });
    let timer = Timer::new(handshake_deadline.saturating_duration_since(Instant::now()));
    let connection = match select(std::pin::pin!(handshake), timer).await {
        Either::Left((result, _)) => result?,
        Either::Right((_, _)) => {
            return Err(WireError::HandshakeTimeout {
                timeout_ms: handshake_timeout.as_millis(),
            });
        }
    };
    let mut driver = ConnectionDriver::new(shared, connection, Rc::new(connection_info), guard);
    poll_fn(|cx| driver.poll(cx)).await
}

type H2Connection<IO> = Connection<Compat<FrameGuard<IO>>, Bytes>;

/// Keepalive state: PINGs are sent on housekeeping ticks.
struct Keepalive {
    ping_pong: PingPong,
    interval: Duration,
    timeout: Duration,
    last_ping_at: Instant,
    /// When the outstanding PING was sent, if one is.
    outstanding_since: Option<Instant>,
}

struct ConnectionDriver<IO> {
    shared: Rc<ServerShared>,
    connection: H2Connection<IO>,
    /// The peer, shared with every call's context.
    info: Rc<ConnectionInfo>,
    /// Calls in flight; bounded by max_concurrent_streams, which h2
    /// enforces on the peer.
    calls: FuturesUnordered<LocalBoxFuture<'static, ()>>,
    drain: EventWait<Rc<Event>>,
    /// Whether the server's drain reached this connection.
    draining: bool,
    /// Armed when the drain starts; fires at the end of the grace period.
    drain_deadline: Option<Timer>,
    /// Fires at every housekeeping period (idle and keepalive checks).
    housekeeping: Option<Timer>,
    housekeeping_period: Duration,
    keepalive: Option<Keepalive>,
    /// Calls started since the last housekeeping tick.
    calls_started: u64,
    /// Time without calls in flight and without new calls.
    idle_for: Duration,
    /// Set once GOAWAY was sent (idle timeout or drain).
    shutting_down: bool,
    /// What the inbound frame watcher saw.
    guard: Rc<GuardState>,
    /// Armed while a request header block is incomplete: (its start, the
    /// timer firing `request_header_timeout` after it).
    header_timer: Option<(Instant, Timer)>,
    /// Streams reset because the client stopped reading (counted by the
    /// call drivers), and how many of those were looked at.
    stalled_streams: Rc<Cell<u32>>,
    stalled_streams_seen: u32,
    /// Set when the peer was cut off for abuse; the bound it exceeded.
    cut: Option<&'static str>,
    /// Armed once the connection is closing (cut off, idle, drain grace
    /// over): when it fires the socket is closed whatever h2 still waits
    /// for (a PING ack for a graceful GOAWAY, a flush to a peer that reads
    /// nothing).
    close_deadline: Option<Timer>,
}

/// What a peer cut off for a no-op frame flood did.
const FLOOD: &str = "no-op frame flood (empty DATA, PING, SETTINGS or PRIORITY)";

/// How long a closing connection's last frames (GOAWAY) may take to be
/// written, and a graceful GOAWAY's PING to be answered, before the socket
/// is closed regardless.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Streams accepted in one batch before the calls run (bounds the time
/// between two flushes under a flood of new streams).
const ACCEPT_BATCH_MAX: u32 = 64;

/// Accept-and-run rounds in one poll before the driver yields to the other
/// tasks of the executor (fairness between connections).
const POLL_ROUNDS_MAX: u32 = 16;

/// Ticks per idle timeout: the idle timeout is honoured within 1/4 of it.
const IDLE_TICKS: u32 = 4;

impl<IO> ConnectionDriver<IO>
where
    IO: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin + 'static,
{
    fn new(
        shared: Rc<ServerShared>,
        mut connection: H2Connection<IO>,
        info: Rc<ConnectionInfo>,
        guard: Rc<GuardState>,
    ) -> Self {
        let config = &shared.config;
        let keepalive = config.keepalive_interval.and_then(|interval| {
            Some(Keepalive {
                ping_pong: connection.ping_pong()?,
                interval,
                timeout: config.keepalive_timeout,
                last_ping_at: Instant::now(),
                outstanding_since: None,
            })
        });
        let periods = [
            config.idle_timeout.map(|idle| idle / IDLE_TICKS),
            config.keepalive_interval,
            config.keepalive_interval.map(|_| config.keepalive_timeout),
        ];
        let housekeeping_period = periods.into_iter().flatten().min();
        let drain = EventWait::new(shared.drain.clone());
        ConnectionDriver {
            shared,
            connection,
            info,
            calls: FuturesUnordered::new(),
            drain,
            draining: false,
            drain_deadline: None,
            housekeeping: housekeeping_period.map(Timer::new),
            housekeeping_period: housekeeping_period.unwrap_or(Duration::MAX),
            keepalive,
            calls_started: 0,
            idle_for: Duration::ZERO,
            shutting_down: false,
            guard,
            header_timer: None,
            stalled_streams: Rc::new(Cell::new(0)),
            stalled_streams_seen: 0,
            cut: None,
            close_deadline: None,
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WireError>> {
        if !self.draining && self.drain.poll_set(cx).is_ready() {
            self.start_drain();
        }
        if let Some(deadline) = &mut self.drain_deadline
            && Pin::new(deadline).poll(cx).is_ready()
        {
            // Grace is over: drop the remaining calls (their streams are
            // reset) and close.
            self.calls.clear();
            self.connection.abrupt_shutdown(Reason::NO_ERROR);
            self.drain_deadline = None;
            self.close_deadline = Some(Timer::new(CLOSE_FLUSH_TIMEOUT));
        }
        if let Poll::Ready(result) = self.poll_close_deadline(cx) {
            return Poll::Ready(result);
        }
        if let Poll::Ready(result) = self.poll_streams(cx) {
            return Poll::Ready(match self.cut {
                Some(what) => Err(WireError::Abuse { what }),
                None => result,
            });
        }
        if self.cut.is_none()
            && let Some(what) = self.poll_abuse(cx)
        {
            self.cut_off(cx, what);
            return Poll::Pending;
        }
        if let Poll::Ready(result) = self.poll_housekeeping(cx) {
            return Poll::Ready(result);
        }
        // Housekeeping may have armed the close deadline: register its timer.
        self.poll_close_deadline(cx)
    }

    /// Ready once the close deadline (if armed) passed: the connection ends.
    fn poll_close_deadline(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WireError>> {
        let Some(deadline) = &mut self.close_deadline else {
            return Poll::Pending;
        };
        ready!(Pin::new(deadline).poll(cx));
        Poll::Ready(match self.cut {
            Some(what) => Err(WireError::Abuse { what }),
            None => Ok(()),
        })
    }

    /// Checks the bounds h2 does not keep; names the one the peer exceeded.
    fn poll_abuse(&mut self, cx: &mut Context<'_>) -> Option<&'static str> {
        if let Some(flood) = self.guard.flood() {
            tracing::debug!(peer = ?self.info.peer_addr, noop_frames = flood.noop_frames, "frame flood");
            return Some(FLOOD);
        }
        if self.poll_header_timeout(cx) {
            return Some("request header block not finished within request_header_timeout");
        }
        let stalled = self.stalled_streams.get();
        if stalled > self.stalled_streams_seen {
            self.stalled_streams_seen = stalled;
            if self.calls.is_empty() {
                return Some("every stream stalled on a client that does not read");
            }
        }
        None
    }

    /// Whether the incomplete header block (if any) is past its timeout.
    fn poll_header_timeout(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(since) = self.guard.header_block_since() else {
            self.header_timer = None;
            return false;
        };
        let timer = match &mut self.header_timer {
            Some((armed_for, timer)) if *armed_for == since => timer,
            slot => {
                let timeout = self.shared.config.request_header_timeout;
                let left = timeout.saturating_sub(since.elapsed());
                &mut slot.insert((since, Timer::new(left))).1
            }
        };
        Pin::new(timer).poll(cx).is_ready()
    }

    /// GOAWAY ENHANCE_YOUR_CALM, every call dropped (its stream reset), and
    /// the socket closed once the GOAWAY is written or `CLOSE_FLUSH_TIMEOUT`
    /// passed.
    fn cut_off(&mut self, cx: &mut Context<'_>, what: &'static str) {
        tracing::debug!(peer = ?self.info.peer_addr, what, "cutting off an abusive connection");
        let cut = &self.shared.connections_cut;
        cut.set(cut.get() + 1);
        self.shared.log_abuse_counts();
        self.calls.clear();
        self.connection.abrupt_shutdown(Reason::ENHANCE_YOUR_CALM);
        self.shutting_down = true;
        self.cut = Some(what);
        self.close_deadline = Some(Timer::new(CLOSE_FLUSH_TIMEOUT));
        // h2 writes the GOAWAY when polled next.
        cx.waker().wake_by_ref();
    }

    /// Runs calls and h2 until neither makes progress.
    ///
    /// Every stream h2 has ready is accepted before any call runs, and the
    /// calls' responses are flushed by the next `poll_accept`: requests that
    /// arrived together are answered with one write.
    fn poll_streams(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WireError>> {
        for _ in 0..POLL_ROUNDS_MAX {
            let mut accepted = 0u32;
            while accepted < ACCEPT_BATCH_MAX {
                match self.connection.poll_accept(cx) {
                    Poll::Ready(Some(Ok((request, respond)))) => {
                        self.accept_call(request, respond);
                        accepted += 1;
                    }
                    Poll::Ready(Some(Err(error))) => {
                        return Poll::Ready(connection_result(error));
                    }
                    Poll::Ready(None) => return Poll::Ready(Ok(())),
                    Poll::Pending => break,
                }
            }
            let mut completed = false;
            while let Poll::Ready(Some(())) = self.calls.poll_next_unpin(cx) {
                completed = true;
            }
            if accepted == 0 && !completed {
                return Poll::Pending;
            }
        }
        // Still busy: yield so the other connections on this executor run.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn accept_call(&mut self, request: http::Request<RecvStream>, respond: SendResponse<Bytes>) {
        self.calls_started += 1;
        let call = prepare_call(
            &self.shared,
            request,
            respond,
            &self.info,
            &self.stalled_streams,
        );
        if let Some(call) = call {
            self.calls.push(call);
        }
    }

    fn start_drain(&mut self) {
        tracing::debug!(peer = ?self.info.peer_addr, "draining connection");
        self.connection.graceful_shutdown();
        self.shutting_down = true;
        self.draining = true;
        self.drain_deadline = Some(Timer::new(self.shared.config.drain_grace));
    }

    fn poll_housekeeping(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WireError>> {
        if let Some(keepalive) = &mut self.keepalive
            && keepalive.outstanding_since.is_some()
            && let Poll::Ready(result) = keepalive.ping_pong.poll_pong(cx)
        {
            keepalive.outstanding_since = None;
            if let Err(error) = result {
                return Poll::Ready(connection_result(error));
            }
        }
        loop {
            let Some(timer) = &mut self.housekeeping else {
                return Poll::Pending;
            };
            if Pin::new(&mut *timer).poll(cx).is_pending() {
                return Poll::Pending;
            }
            timer.reset(self.housekeeping_period);
            if let Err(error) = self.on_tick() {
                return Poll::Ready(Err(error));
            }
        }
    }

    /// One housekeeping period passed: idle accounting and keepalive.
    fn on_tick(&mut self) -> Result<(), WireError> {
        let idle = self.calls.is_empty() && self.calls_started == 0;
        self.calls_started = 0;
        self.idle_for = if idle {
            self.idle_for.saturating_add(self.housekeeping_period)
        } else {
            Duration::ZERO
        };
        if let Some(idle_timeout) = self.shared.config.idle_timeout
            && self.idle_for >= idle_timeout
            && !self.shutting_down
        {
            tracing::debug!(peer = ?self.info.peer_addr, "idle timeout: closing connection");
            self.connection.graceful_shutdown();
            self.shutting_down = true;
            // An idle peer loses nothing if it never acks the GOAWAY's PING.
            self.close_deadline = Some(Timer::new(CLOSE_FLUSH_TIMEOUT));
        }
        let Some(keepalive) = &mut self.keepalive else {
            return Ok(());
        };
        let now = Instant::now();
        match keepalive.outstanding_since {
            Some(sent_at) if now.duration_since(sent_at) >= keepalive.timeout => {
                Err(WireError::KeepaliveTimeout {
                    timeout_ms: keepalive.timeout.as_millis(),
                })
            }
            Some(_) => Ok(()),
            None if now.duration_since(keepalive.last_ping_at) >= keepalive.interval => {
                // A PING is refused only while another is outstanding.
                if keepalive.ping_pong.send_ping(Ping::opaque()).is_ok() {
                    keepalive.outstanding_since = Some(now);
                    keepalive.last_ping_at = now;
                }
                Ok(())
            }
            None => Ok(()),
        }
    }
}

/// A connection that ended with an error: an orderly close by the peer is
/// not a failure worth reporting.
fn connection_result(error: h2::Error) -> Result<(), WireError> {
    let peer_hung_up = error.is_io()
        && error.get_io().is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::UnexpectedEof
            )
        });
    if peer_hung_up || error.reason() == Some(Reason::NO_ERROR) {
        Ok(())
    } else {
        Err(WireError::Connection(error))
    }
}
