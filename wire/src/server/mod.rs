//! The gRPC server half: a [`Router`] of typed handlers, the
//! [`ServerConfig`] limits, and the [`Server`] that accepts connections,
//! drives h2 on each, and drains gracefully.
//!
//! Thread-per-core: a `Server` and everything it owns live on one glommio
//! executor (`!Send`, `Rc` inside); each core runs its own.
//!
//! ```no_run
//! use shardlog_wire::server::{Router, Server, ServerConfig};
//! use shardlog_wire::{Request, Response, Status};
//!
//! glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
//!     .spawn(|| async {
//!         let mut router = Router::new();
//!         router.unary("/demo.Echo/Ping", |request: Request<()>| async move {
//!             if request.context().is_cancelled() {
//!                 return Err(Status::cancelled("gone"));
//!             }
//!             Ok(Response::new(()))
//!         });
//!         let server = Server::new(router, ServerConfig::default());
//!         let listener = glommio::net::TcpListener::bind("127.0.0.1:50051").unwrap();
//!         server.serve(listener).await.unwrap(); // until server.shutdown()
//!     })
//!     .unwrap()
//!     .join()
//!     .unwrap();
//! ```

mod admission;
mod conn;
mod dispatch;
mod drive;
mod guard;

pub use admission::{ConnectionPermit, Refusal, SourceIpConnections};

use std::cell::Cell;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_util::future::{Either, select};

use crate::call::{CallContext, ConnectionInfo, Request, Response, ResponseSink, Streaming};
use crate::codec::MESSAGE_BYTES_MAX_DEFAULT;
use crate::error::WireError;
use crate::event::{Event, EventWait, wait_until};
use crate::metadata::Metadata;
use crate::status::{Code, Status};
use crate::tls::TlsAcceptor;

use dispatch::Method;
use drive::{BidiStreamingMethod, ClientStreamingMethod, ServerStreamingMethod, UnaryMethod};

/// Maps exact `:path` values (`/pkg.Service/Method`) to typed handlers.
#[derive(Default)]
pub struct Router {
    methods: HashMap<&'static str, Rc<dyn Method>>,
    interceptor: Option<Rc<dyn Interceptor>>,
}

/// Runs before the handler of every routed call, e.g. to authenticate it
/// (and record who it acts for with [`CallContext::set_principal`]). An
/// error becomes the call's status, sent at once; the handler never runs.
pub trait Interceptor {
    /// Admits the call or says why not.
    fn intercept(&self, context: &CallContext, metadata: &Metadata) -> Result<(), Status>;
}

impl<F> Interceptor for F
where
    F: Fn(&CallContext, &Metadata) -> Result<(), Status>,
{
    fn intercept(&self, context: &CallContext, metadata: &Metadata) -> Result<(), Status> {
        self(context, metadata)
    }
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("methods", &self.method_paths())
            .finish()
    }
}

impl Router {
    /// An empty router.
    pub fn new() -> Router {
        Router::default()
    }

    fn add(&mut self, path: &'static str, method: Rc<dyn Method>) -> &mut Self {
        assert!(
            path.starts_with('/') && path[1..].contains('/'),
            "method path {path:?} is not /package.Service/Method"
        );
        let previous = self.methods.insert(path, method);
        assert!(previous.is_none(), "method path {path:?} registered twice");
        self
    }

    /// Registers a unary handler: one request message, one response.
    pub fn unary<Req, Resp, H, Fut>(&mut self, path: &'static str, handler: H) -> &mut Self
    where
        Req: prost::Message + Default + 'static,
        Resp: prost::Message + 'static,
        H: Fn(Request<Req>) -> Fut + 'static,
        Fut: Future<Output = Result<Response<Resp>, Status>> + 'static,
    {
        self.add(path, Rc::new(UnaryMethod::new(handler)))
    }

    /// Registers a server-streaming handler: one request, messages sent
    /// through the [`ResponseSink`], status from the returned result.
    pub fn server_streaming<Req, Resp, H, Fut>(
        &mut self,
        path: &'static str,
        handler: H,
    ) -> &mut Self
    where
        Req: prost::Message + Default + 'static,
        Resp: prost::Message + 'static,
        H: Fn(Request<Req>, ResponseSink<Resp>) -> Fut + 'static,
        Fut: Future<Output = Result<(), Status>> + 'static,
    {
        self.add(path, Rc::new(ServerStreamingMethod::new(handler)))
    }

    /// Registers a client-streaming handler: inbound [`Streaming`], one
    /// response.
    pub fn client_streaming<Req, Resp, H, Fut>(
        &mut self,
        path: &'static str,
        handler: H,
    ) -> &mut Self
    where
        Req: prost::Message + Default + 'static,
        Resp: prost::Message + 'static,
        H: Fn(Request<Streaming<Req>>) -> Fut + 'static,
        Fut: Future<Output = Result<Response<Resp>, Status>> + 'static,
    {
        self.add(path, Rc::new(ClientStreamingMethod::new(handler)))
    }

    /// Registers a bidirectional-streaming handler.
    pub fn bidi_streaming<Req, Resp, H, Fut>(&mut self, path: &'static str, handler: H) -> &mut Self
    where
        Req: prost::Message + Default + 'static,
        Resp: prost::Message + 'static,
        H: Fn(Request<Streaming<Req>>, ResponseSink<Resp>) -> Fut + 'static,
        Fut: Future<Output = Result<(), Status>> + 'static,
    {
        self.add(path, Rc::new(BidiStreamingMethod::new(handler)))
    }

    /// Runs `interceptor` before every call's handler (replacing any set
    /// before). Calls to unknown methods are answered UNIMPLEMENTED without
    /// reaching it.
    pub fn intercept(&mut self, interceptor: impl Interceptor + 'static) -> &mut Self {
        self.interceptor = Some(Rc::new(interceptor));
        self
    }

    pub(crate) fn interceptor(&self) -> Option<&Rc<dyn Interceptor>> {
        self.interceptor.as_ref()
    }

    /// Fully qualified names of the registered services, sorted, unique
    /// (what reflection's `list_services` answers).
    pub fn service_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .methods
            .keys()
            .filter_map(|path| service_of(path))
            .map(str::to_owned)
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Every registered method path, sorted.
    pub fn method_paths(&self) -> Vec<&'static str> {
        let mut paths: Vec<&'static str> = self.methods.keys().copied().collect();
        paths.sort_unstable();
        paths
    }

    /// The registered path equal to `path` and its handler.
    pub(crate) fn route(&self, path: &str) -> Option<(&'static str, &Rc<dyn Method>)> {
        self.methods.get_key_value(path).map(|(path, m)| (*path, m))
    }

    /// Whether any method of `service` is registered.
    pub(crate) fn has_service(&self, service: &str) -> bool {
        self.methods
            .keys()
            .any(|path| service_of(path) == Some(service))
    }
}

/// `pkg.Service` from `/pkg.Service/Method`.
pub(crate) fn service_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix('/')?;
    rest.split_once('/').map(|(service, _)| service)
}

/// Every server limit and timer, each with a documented default.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Connections served at once by one [`Server::serve`]; further ones
    /// wait in the kernel's accept backlog (and [`Server::admit`] refuses
    /// them). Default 10,000.
    pub max_connections: usize,
    /// Connections one source IP address may hold open at once, counted
    /// in `source_ip_connections` (process-wide when every shard's config
    /// shares that table); beyond it a new connection is closed at once.
    /// `None` disables the cap. Default 4,096.
    pub max_connections_per_ip: Option<u32>,
    /// The table `max_connections_per_ip` counts in. Clones share it: clone
    /// one config (or this table) into every shard. Default: a new table.
    pub source_ip_connections: SourceIpConnections,
    /// Longest a request header block may take from its first byte to
    /// END_HEADERS (slowloris defence: trickled bytes do not reset it);
    /// beyond it the connection gets GOAWAY ENHANCE_YOUR_CALM and is
    /// closed. Default 10 s.
    pub request_header_timeout: Duration,
    /// Frames that carry no request data (empty DATA without END_STREAM,
    /// PING, SETTINGS, PRIORITY) a connection may send per second; beyond
    /// it the connection gets GOAWAY ENHANCE_YOUR_CALM and is closed.
    /// Default 1,000.
    pub max_noop_frames_per_second: u32,
    /// A streamed response waiting this long for flow-control capacity
    /// (a client that stopped reading) has its stream reset; a connection
    /// left with only such streams is closed. `None` waits forever.
    /// Default 60 s.
    pub send_stall_timeout: Option<Duration>,
    /// SETTINGS_MAX_CONCURRENT_STREAMS advertised per connection; also the
    /// bound on calls in flight per connection. Each call may hold one
    /// message being reassembled (up to `max_message_bytes`), so a
    /// connection's decode memory is at most this times `max_message_bytes`.
    /// Default 256.
    pub max_concurrent_streams: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE advertised; bigger header blocks are
    /// refused. Default 16 KiB.
    pub max_header_list_size_bytes: u32,
    /// Largest message body received or sent (after decompression);
    /// larger ones fail the call with RESOURCE_EXHAUSTED. Default 4 MiB.
    pub max_message_bytes: usize,
    /// Initial per-stream receive window. Default 1 MiB.
    pub initial_stream_window_bytes: u32,
    /// Connection-level receive window. Default 16 MiB.
    pub initial_connection_window_bytes: u32,
    /// SETTINGS_MAX_FRAME_SIZE advertised. Default 16 KiB (the HTTP/2 minimum).
    pub max_frame_size_bytes: u32,
    /// Data h2 buffers per stream before send capacity is withheld
    /// (backpressure on [`ResponseSink::send`]). Default 1 MiB.
    pub max_send_buffer_bytes: usize,
    /// Time a new connection has to complete the HTTP/2 preface and
    /// SETTINGS exchange. Default 10 s.
    pub handshake_timeout: Duration,
    /// A connection without calls for this long gets GOAWAY and is closed;
    /// `None` keeps idle connections. Default 300 s.
    pub idle_timeout: Option<Duration>,
    /// Interval of keepalive PINGs sent by the server; `None` sends none
    /// (PINGs from the client are always answered). Default 60 s.
    pub keepalive_interval: Option<Duration>,
    /// A keepalive PING unanswered this long closes the connection.
    /// Default 20 s.
    pub keepalive_timeout: Duration,
    /// On [`Server::shutdown`], how long in-flight calls may still run
    /// before their connections are closed. Default 10 s.
    pub drain_grace: Duration,
    /// h2: streams reset by the client before being accepted, beyond which
    /// the connection gets GOAWAY (rapid-reset defence). Default 20.
    pub max_pending_accept_reset_streams: usize,
    /// h2: streams the server may reset for protocol errors caused by the
    /// client before closing the connection. Default 1024.
    pub max_local_error_reset_streams: Option<usize>,
    /// h2: recently reset streams remembered. Default 10.
    pub max_concurrent_reset_streams: usize,
}

// The defaults must pass `validate`: checked at compile time where possible.
const _: () = assert!(16 * 1024 >= FRAME_SIZE_MIN_BYTES);
const _: () = assert!(16 * 1024 * 1024 <= WINDOW_MAX_BYTES);

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            max_connections: 10_000,
            max_connections_per_ip: Some(4096),
            source_ip_connections: SourceIpConnections::new(),
            request_header_timeout: Duration::from_secs(10),
            max_noop_frames_per_second: 1000,
            send_stall_timeout: Some(Duration::from_secs(60)),
            max_concurrent_streams: 256,
            max_header_list_size_bytes: 16 * 1024,
            max_message_bytes: MESSAGE_BYTES_MAX_DEFAULT,
            initial_stream_window_bytes: 1024 * 1024,
            initial_connection_window_bytes: 16 * 1024 * 1024,
            max_frame_size_bytes: 16 * 1024,
            max_send_buffer_bytes: 1024 * 1024,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(300)),
            keepalive_interval: Some(Duration::from_secs(60)),
            keepalive_timeout: Duration::from_secs(20),
            drain_grace: Duration::from_secs(10),
            max_pending_accept_reset_streams: 20,
            max_local_error_reset_streams: Some(1024),
            max_concurrent_reset_streams: 10,
        }
    }
}

/// Smallest SETTINGS_MAX_FRAME_SIZE HTTP/2 allows (RFC 9113, 6.5.2).
pub(crate) const FRAME_SIZE_MIN_BYTES: u32 = 16_384;
/// Largest SETTINGS_MAX_FRAME_SIZE HTTP/2 allows.
pub(crate) const FRAME_SIZE_MAX_BYTES: u32 = (1 << 24) - 1;
/// Largest flow-control window HTTP/2 allows.
pub(crate) const WINDOW_MAX_BYTES: u32 = (1 << 31) - 1;

/// Checks the HTTP/2 ranges of frame and window sizes (h2 panics outside them).
pub(crate) fn validate_http2_sizes(
    max_frame_size_bytes: u32,
    initial_stream_window_bytes: u32,
    initial_connection_window_bytes: u32,
) -> Result<(), WireError> {
    let invalid =
        |setting: &'static str, reason: String| Err(WireError::InvalidConfig { setting, reason });
    if !(FRAME_SIZE_MIN_BYTES..=FRAME_SIZE_MAX_BYTES).contains(&max_frame_size_bytes) {
        let reason = format!("{max_frame_size_bytes} is outside 16384..=16777215");
        return invalid("max_frame_size_bytes", reason);
    }
    if initial_stream_window_bytes > WINDOW_MAX_BYTES {
        let reason = format!("{initial_stream_window_bytes} exceeds 2^31-1");
        return invalid("initial_stream_window_bytes", reason);
    }
    if initial_connection_window_bytes > WINDOW_MAX_BYTES {
        let reason = format!("{initial_connection_window_bytes} exceeds 2^31-1");
        return invalid("initial_connection_window_bytes", reason);
    }
    Ok(())
}

impl ServerConfig {
    /// Checks every value against what HTTP/2 and this crate allow; the
    /// server's config loader reports this error, [`Server::new`] panics on it.
    pub fn validate(&self) -> Result<(), WireError> {
        validate_http2_sizes(
            self.max_frame_size_bytes,
            self.initial_stream_window_bytes,
            self.initial_connection_window_bytes,
        )?;
        let invalid = |setting: &'static str, reason: &str| {
            Err(WireError::InvalidConfig {
                setting,
                reason: reason.to_owned(),
            })
        };
        if self.max_connections == 0 {
            return invalid("max_connections", "must be positive");
        }
        if self.max_connections_per_ip == Some(0) {
            return invalid(
                "max_connections_per_ip",
                "must be positive (None disables it)",
            );
        }
        if self.request_header_timeout.is_zero() {
            return invalid("request_header_timeout", "must be positive");
        }
        if self.max_noop_frames_per_second == 0 {
            return invalid("max_noop_frames_per_second", "must be positive");
        }
        if self.send_stall_timeout.is_some_and(|stall| stall.is_zero()) {
            return invalid("send_stall_timeout", "must be positive (None disables it)");
        }
        if self.max_concurrent_streams == 0 {
            return invalid("max_concurrent_streams", "must be positive");
        }
        if self.max_message_bytes > u32::MAX as usize {
            return invalid("max_message_bytes", "exceeds the u32 length prefix");
        }
        if self.max_send_buffer_bytes > u32::MAX as usize {
            return invalid("max_send_buffer_bytes", "exceeds u32::MAX");
        }
        if self.idle_timeout.is_some_and(|idle| idle.is_zero()) {
            return invalid("idle_timeout", "must be positive (None disables it)");
        }
        if self
            .keepalive_interval
            .is_some_and(|interval| interval.is_zero())
        {
            return invalid("keepalive_interval", "must be positive (None disables it)");
        }
        if self.keepalive_timeout.is_zero() {
            return invalid("keepalive_timeout", "must be positive");
        }
        Ok(())
    }

    fn h2_builder(&self) -> h2::server::Builder {
        let mut builder = h2::server::Builder::new();
        builder
            .max_concurrent_streams(self.max_concurrent_streams)
            .max_header_list_size(self.max_header_list_size_bytes)
            .initial_window_size(self.initial_stream_window_bytes)
            .initial_connection_window_size(self.initial_connection_window_bytes)
            .max_frame_size(self.max_frame_size_bytes)
            .max_send_buffer_size(self.max_send_buffer_bytes)
            .max_pending_accept_reset_streams(self.max_pending_accept_reset_streams)
            .max_local_error_reset_streams(self.max_local_error_reset_streams)
            .max_concurrent_reset_streams(self.max_concurrent_reset_streams);
        builder
    }
}

/// State shared by a server's accept loop and its connections.
pub(crate) struct ServerShared {
    pub(crate) router: Router,
    pub(crate) config: ServerConfig,
    pub(crate) h2_builder: h2::server::Builder,
    /// Set once by [`Server::shutdown`].
    pub(crate) drain: Rc<Event>,
    pub(crate) connections_active: Cell<usize>,
    /// Notified whenever a connection ends.
    pub(crate) connection_closed: Event,
    /// Connections refused by [`Server::admit`], per cap.
    pub(crate) refused_total_cap: Cell<u64>,
    pub(crate) refused_source_ip_cap: Cell<u64>,
    /// Connections cut off for abuse (floods, stalls, slow headers).
    pub(crate) connections_cut: Cell<u64>,
    /// When a refusal or cut-off was last logged at warn level.
    pub(crate) abuse_logged_at: Cell<Option<Instant>>,
    pub(crate) observer: Option<Rc<dyn CallObserver>>,
}

/// Least time between two warn-level lines about refused or cut-off
/// connections: an attack shows in the log without flooding it.
const ABUSE_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl ServerShared {
    /// Logs the refusal and cut-off counts at warn level, at most once per
    /// [`ABUSE_LOG_INTERVAL`].
    pub(crate) fn log_abuse_counts(&self) {
        let now = Instant::now();
        let due = self
            .abuse_logged_at
            .get()
            .is_none_or(|at| now.duration_since(at) >= ABUSE_LOG_INTERVAL);
        if !due {
            return;
        }
        self.abuse_logged_at.set(Some(now));
        tracing::warn!(
            refused_total_cap = self.refused_total_cap.get(),
            refused_source_ip_cap = self.refused_source_ip_cap.get(),
            cut_for_abuse = self.connections_cut.get(),
            "connections refused over the caps or cut off for HTTP/2 abuse (totals since start)"
        );
    }
}

/// Receives the outcome of every gRPC call a [`Server`] answers, including
/// the statuses the library generates (unknown method, deadline, panic,
/// drain). For metrics; called on the connection's executor, keep it cheap.
pub trait CallObserver {
    /// A call ended with `code`. `method` is the registered path, or `None`
    /// when the path matched no method (unbounded client input is never
    /// passed on). `elapsed` runs from the request headers' arrival to the
    /// response's end being queued. Requests that are not gRPC at all (not
    /// POST, wrong content-type) are answered with HTTP errors and not
    /// reported.
    fn call_finished(&self, method: Option<&'static str>, code: Code, elapsed: Duration);
}

/// A gRPC server for one executor. Cheap to clone (`Rc` inside).
#[derive(Clone)]
pub struct Server {
    shared: Rc<ServerShared>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("router", &self.shared.router)
            .field("connections_active", &self.shared.connections_active.get())
            .field("draining", &self.is_draining())
            .finish()
    }
}

/// Pause after a failed accept (e.g. out of file descriptors) before the
/// next attempt, so the loop does not spin.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(10);

impl Server {
    /// A server routing with `router` under the limits of `config`.
    ///
    /// Panics if `config` fails [`ServerConfig::validate`] (check it first
    /// to report configuration errors).
    pub fn new(router: Router, config: ServerConfig) -> Server {
        Server::build(router, config, None)
    }

    /// [`new`](Self::new), reporting every call's outcome to `observer`
    /// (metrics).
    pub fn with_observer(
        router: Router,
        config: ServerConfig,
        observer: Rc<dyn CallObserver>,
    ) -> Server {
        Server::build(router, config, Some(observer))
    }

    fn build(
        router: Router,
        config: ServerConfig,
        observer: Option<Rc<dyn CallObserver>>,
    ) -> Server {
        if let Err(error) = config.validate() {
            panic!("invalid server configuration: {error}");
        }
        let h2_builder = config.h2_builder();
        Server {
            shared: Rc::new(ServerShared {
                router,
                config,
                h2_builder,
                drain: Rc::new(Event::new()),
                connections_active: Cell::new(0),
                connection_closed: Event::new(),
                refused_total_cap: Cell::new(0),
                refused_source_ip_cap: Cell::new(0),
                connections_cut: Cell::new(0),
                abuse_logged_at: Cell::new(None),
                observer,
            }),
        }
    }

    /// Serves one accepted connection until it closes or the server drains.
    /// `connection` describes the peer to every call's [`CallContext`].
    /// The connection counts as active but is not checked against the caps:
    /// use [`admit`](Self::admit) and [`serve_admitted`](Self::serve_admitted)
    /// for that.
    pub async fn serve_connection<IO>(
        &self,
        io: IO,
        connection: ConnectionInfo,
    ) -> Result<(), WireError>
    where
        IO: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin + 'static,
    {
        let permit = ConnectionPermit::unchecked(self.shared.clone());
        conn::serve_connection(self.shared.clone(), io, connection, permit).await
    }

    /// Admission of a new connection from `peer` against `max_connections`
    /// and `max_connections_per_ip`: a permit to hold for the connection's
    /// lifetime, or `None` when the connection must be closed at once
    /// (counted in [`refused_connections`](Self::refused_connections)).
    /// Call it right after accept, before any handshake (TLS included).
    pub fn admit(&self, peer: Option<SocketAddr>) -> Option<ConnectionPermit> {
        match ConnectionPermit::admit(&self.shared, peer) {
            Ok(permit) => Some(permit),
            Err(refusal) => {
                let counter = match refusal {
                    Refusal::TotalCap => &self.shared.refused_total_cap,
                    Refusal::SourceIpCap => &self.shared.refused_source_ip_cap,
                };
                counter.set(counter.get() + 1);
                tracing::debug!(?peer, ?refusal, "connection refused");
                self.shared.log_abuse_counts();
                None
            }
        }
    }

    /// [`serve_connection`](Self::serve_connection) for a connection that
    /// [`admit`](Self::admit) let in; `permit` is released when it closes.
    ///
    /// Panics if `permit` came from another server.
    pub async fn serve_admitted<IO>(
        &self,
        io: IO,
        connection: ConnectionInfo,
        permit: ConnectionPermit,
    ) -> Result<(), WireError>
    where
        IO: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin + 'static,
    {
        assert!(
            permit.is_for(&self.shared),
            "permit belongs to another server"
        );
        conn::serve_connection(self.shared.clone(), io, connection, permit).await
    }

    /// Accept loop on `listener`: spawns [`serve_admitted`](Self::serve_admitted)
    /// per connection on the current executor, at most
    /// `config.max_connections` at once (further ones wait in the backlog);
    /// connections over `max_connections_per_ip` are closed at once.
    /// Returns once the server drains.
    pub async fn serve(&self, listener: glommio::net::TcpListener) -> Result<(), WireError> {
        self.accept_loop(listener, |stream| self.spawn_connection(stream))
            .await
    }

    /// [`serve`](Self::serve) over TLS: each accepted connection does the
    /// TLS handshake with the configuration `acceptor` holds at that moment
    /// (see [`TlsAcceptor::replace`]), then HTTP/2. Both handshakes share
    /// `config.handshake_timeout`, and connections in their TLS handshake
    /// count against `config.max_connections`.
    pub async fn serve_tls(
        &self,
        listener: glommio::net::TcpListener,
        acceptor: TlsAcceptor,
    ) -> Result<(), WireError> {
        self.accept_loop(listener, |stream| {
            self.spawn_tls_connection(stream, acceptor.current())
        })
        .await
    }

    /// Accepts until the server drains, handing each connection to `spawn`
    /// while fewer than `config.max_connections` are active.
    async fn accept_loop(
        &self,
        listener: glommio::net::TcpListener,
        spawn: impl Fn(glommio::net::TcpStream),
    ) -> Result<(), WireError> {
        let mut drain = EventWait::new(self.shared.drain.clone());
        loop {
            let shared = &self.shared;
            let below_limit = wait_until(&shared.connection_closed, || {
                shared.connections_active.get() < shared.config.max_connections
            });
            match select(std::pin::pin!(below_limit), &mut drain).await {
                Either::Left(((), _)) => {}
                Either::Right(((), _)) => return Ok(()),
            }
            let accepted = match select(std::pin::pin!(listener.accept()), &mut drain).await {
                Either::Left((accepted, _)) => accepted,
                Either::Right(((), _)) => return Ok(()),
            };
            match accepted {
                Ok(stream) => spawn(stream),
                Err(error) => {
                    tracing::warn!(%error, "accept failed; retrying");
                    glommio::timer::sleep(ACCEPT_RETRY_DELAY).await;
                }
            }
        }
    }

    fn spawn_connection(&self, stream: glommio::net::TcpStream) {
        let peer = stream.peer_addr().ok();
        // Refused: dropping the stream closes it before any HTTP/2 work.
        let Some(permit) = self.admit(peer) else {
            return;
        };
        // Small responses must not wait for Nagle.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "set_nodelay failed");
        }
        let server = self.clone();
        glommio::spawn_local(async move {
            let connection = ConnectionInfo::plaintext(peer);
            if let Err(error) = server.serve_admitted(stream, connection, permit).await {
                tracing::debug!(?peer, %error, "connection ended with an error");
            }
        })
        .detach();
    }

    fn spawn_tls_connection(
        &self,
        stream: glommio::net::TcpStream,
        acceptor: futures_rustls::TlsAcceptor,
    ) {
        let peer = stream.peer_addr().ok();
        // Refused before the TLS handshake: no crypto work for it.
        let Some(permit) = self.admit(peer) else {
            return;
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "set_nodelay failed");
        }
        let shared = self.shared.clone();
        glommio::spawn_local(async move {
            let served = conn::serve_tls_connection(shared, stream, acceptor, peer, permit);
            if let Err(error) = served.await {
                tracing::debug!(?peer, %error, "tls connection ended with an error");
            }
        })
        .detach();
    }

    /// Graceful drain: stop accepting, GOAWAY every connection, let
    /// in-flight calls finish for up to `config.drain_grace`, then close.
    /// Calls arriving meanwhile get UNAVAILABLE. Resolves once every
    /// connection of this server is closed.
    pub async fn shutdown(&self) {
        self.shared.drain.set();
        let shared = &self.shared;
        wait_until(&shared.connection_closed, || {
            shared.connections_active.get() == 0
        })
        .await;
    }

    /// Whether [`shutdown`](Self::shutdown) was called.
    pub fn is_draining(&self) -> bool {
        self.shared.drain.is_set()
    }

    /// Connections being served right now.
    pub fn active_connections(&self) -> usize {
        self.shared.connections_active.get()
    }

    /// Connections refused so far by [`admit`](Self::admit), as
    /// (over `max_connections`, over `max_connections_per_ip`).
    pub fn refused_connections(&self) -> (u64, u64) {
        (
            self.shared.refused_total_cap.get(),
            self.shared.refused_source_ip_cap.get(),
        )
    }

    /// Connections cut off so far (GOAWAY ENHANCE_YOUR_CALM) for a frame
    /// flood, an unfinished header block or streams stalled on a client
    /// that does not read.
    pub fn connections_cut(&self) -> u64 {
        self.shared.connections_cut.get()
    }

    /// The router's service names (see [`Router::service_names`]).
    pub fn service_names(&self) -> Vec<String> {
        self.shared.router.service_names()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid_and_bad_values_are_named() {
        ServerConfig::default()
            .validate()
            .expect("defaults are valid");
        let cases: [(&str, ServerConfig); 4] = [
            (
                "max_frame_size_bytes",
                ServerConfig {
                    max_frame_size_bytes: 1024,
                    ..ServerConfig::default()
                },
            ),
            (
                "initial_stream_window_bytes",
                ServerConfig {
                    initial_stream_window_bytes: u32::MAX,
                    ..ServerConfig::default()
                },
            ),
            (
                "max_connections",
                ServerConfig {
                    max_connections: 0,
                    ..ServerConfig::default()
                },
            ),
            (
                "idle_timeout",
                ServerConfig {
                    idle_timeout: Some(Duration::ZERO),
                    ..ServerConfig::default()
                },
            ),
        ];
        for (name, config) in cases {
            match config.validate() {
                Err(WireError::InvalidConfig { setting, .. }) => assert_eq!(setting, name),
                other => panic!("{name}: unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn admit_enforces_both_caps_and_counts_refusals() {
        let table = SourceIpConnections::new();
        let config = ServerConfig {
            max_connections: 3,
            max_connections_per_ip: Some(2),
            source_ip_connections: table.clone(),
            ..ServerConfig::default()
        };
        let server = Server::new(Router::new(), config);
        let a: SocketAddr = "10.0.0.1:1000".parse().expect("addr");
        let b: SocketAddr = "10.0.0.2:1000".parse().expect("addr");
        let a1 = server.admit(Some(a)).expect("first from a");
        let a2 = server.admit(Some(a)).expect("second from a");
        assert!(server.admit(Some(a)).is_none(), "third from a: per-IP cap");
        let b1 = server.admit(Some(b)).expect("first from b");
        assert!(server.admit(Some(b)).is_none(), "total cap");
        assert!(server.admit(None).is_none(), "total cap, unknown peer");
        assert_eq!(server.active_connections(), 3);
        assert_eq!(server.refused_connections(), (2, 1));
        drop((a1, b1));
        assert_eq!(table.connections(a.ip()), 1);
        assert_eq!(table.connections(b.ip()), 0);
        let _a3 = server.admit(Some(a)).expect("a slot was freed");
        drop(a2);
        assert_eq!(server.active_connections(), 1);
    }

    #[test]
    fn router_lists_services_and_routes_exact_paths() {
        let mut router = Router::new();
        router
            .unary("/a.S/M", |_request: Request<()>| async {
                Ok(Response::new(()))
            })
            .unary("/a.S/N", |_request: Request<()>| async {
                Ok(Response::new(()))
            })
            .unary("/b.T/M", |_request: Request<()>| async {
                Ok(Response::new(()))
            });
        assert_eq!(router.service_names(), ["a.S", "b.T"]);
        assert_eq!(router.method_paths(), ["/a.S/M", "/a.S/N", "/b.T/M"]);
        assert!(router.route("/a.S/M").is_some());
        assert!(router.route("/a.S/M/").is_none());
        assert!(router.route("/a.s/m").is_none());
        assert!(router.has_service("a.S"));
        assert!(!router.has_service("a"));
    }
}
