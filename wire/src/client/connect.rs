//! [`Client`]: the entry point of the client library. Holds the connection
//! pool to one server and the retry policy, runs unary calls with
//! retries, and hands out producers, consumers and the admin API.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::admin::Admin;
use super::backoff::{Backoff, Jitter};
use super::consumer::{Consumer, StartAt};
use super::error::{ClientError, RetryClass};
use super::pool::{CONNECT_TIMEOUT_DEFAULT, Pool};
use super::producer::{Producer, ProducerConfig};
use super::runtime::Runtime;
use super::{CallOptions, ChannelConfig};

/// Retry policy of every call the library makes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Delay schedule between attempts.
    pub backoff: Backoff,
    /// Retries after the first attempt before giving up. Default 10.
    pub retries_max: u32,
    /// Overall time budget of one operation, retries included. Default 30 s.
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            backoff: Backoff::default(),
            retries_max: 10,
            deadline: Duration::from_secs(30),
        }
    }
}

/// Settings of a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Connections in the pool. Default 1 (HTTP/2 multiplexes calls).
    pub connections: usize,
    /// Per-attempt timeout of unary calls (sent as `grpc-timeout`).
    /// Default 10 s.
    pub request_timeout: Duration,
    /// Bound of one connection attempt (TCP, TLS, HTTP/2 handshakes).
    /// Default [`CONNECT_TIMEOUT_DEFAULT`] (10 s).
    pub connect_timeout: Duration,
    /// Retries of transient failures.
    pub retry: RetryPolicy,
    /// Settings of each HTTP/2 connection (its timer is replaced by the
    /// runtime's).
    pub channel: ChannelConfig,
    /// When set, a background task probes every live pooled connection
    /// with `grpc.health.v1.Health/Check` at this interval and drops those
    /// not SERVING (they reconnect on next use). Connections whose driver
    /// ended are always dropped on next use. Default: off.
    pub health_check_interval: Option<Duration>,
    /// TLS for every connection (e.g. from `tls::client_config`); `None`
    /// connects in plaintext. Default: `None`.
    pub tls: Option<crate::tls::ClientTls>,
}

impl Default for ClientConfig {
    fn default() -> ClientConfig {
        ClientConfig {
            connections: 1,
            request_timeout: Duration::from_secs(10),
            connect_timeout: CONNECT_TIMEOUT_DEFAULT,
            retry: RetryPolicy::default(),
            channel: ChannelConfig::default(),
            health_check_interval: None,
            tls: None,
        }
    }
}

pub(crate) struct ClientInner<R: Runtime> {
    pub(crate) runtime: R,
    pub(crate) pool: Pool<R>,
    pub(crate) config: ClientConfig,
    next_slot: Cell<usize>,
    jitter: std::cell::RefCell<Jitter>,
}

/// A client of one shardlog server. Cheap to clone (`Rc`); `!Send`: use it
/// on the thread (executor) that created it.
pub struct Client<R: Runtime> {
    pub(crate) inner: Rc<ClientInner<R>>,
}

impl<R: Runtime> Clone for Client<R> {
    fn clone(&self) -> Client<R> {
        Client {
            inner: self.inner.clone(),
        }
    }
}

impl<R: Runtime> std::fmt::Debug for Client<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.inner.pool.addr())
            .field("connections", &self.inner.pool.size())
            .finish_non_exhaustive()
    }
}

const LOG_SERVICE: &str = "/shardlog.v1.Log/";

impl<R: Runtime> Client<R> {
    /// A client of the server at `addr`. Connects lazily: the first call
    /// opens the first connection.
    pub fn new(
        runtime: R,
        addr: SocketAddr,
        config: ClientConfig,
    ) -> Result<Client<R>, ClientError> {
        let mut pool = Pool::new(
            runtime.clone(),
            addr,
            config.connections,
            config.channel.clone(),
        )?
        .with_connect_timeout(config.connect_timeout);
        if let Some(tls) = &config.tls {
            pool = pool.with_tls(tls.clone());
        }
        let health_check_interval = config.health_check_interval;
        let inner = Rc::new(ClientInner {
            runtime,
            pool,
            config,
            next_slot: Cell::new(0),
            jitter: std::cell::RefCell::new(Jitter::new()),
        });
        if let Some(interval) = health_check_interval {
            let task = health_checks(Rc::downgrade(&inner), interval);
            inner.runtime.spawn(Box::pin(task));
        }
        Ok(Client { inner })
    }

    /// The connection pool.
    pub fn pool(&self) -> &Pool<R> {
        &self.inner.pool
    }

    /// The topic administration API.
    pub fn admin(&self) -> Admin<R> {
        Admin::new(self.clone())
    }

    /// A batching, idempotent producer.
    pub fn producer(&self, config: ProducerConfig) -> Result<Producer<R>, ClientError> {
        Producer::new(self.clone(), config)
    }

    /// A consumer of one partition starting at `start`.
    pub async fn consumer(
        &self,
        topic: &str,
        partition: u32,
        start: StartAt,
    ) -> Result<Consumer<R>, ClientError> {
        Consumer::new(self.clone(), topic, partition, start).await
    }

    /// A unary Log-service call with retries of transient failures
    /// (backoff with jitter, `retries_max`, overall deadline: no attempt
    /// and no backoff runs past it).
    pub(crate) async fn call<Req, Resp>(
        &self,
        method: &'static str,
        request: &Req,
        attempt_timeout: Duration,
    ) -> Result<Resp, ClientError>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let path = format!("{LOG_SERVICE}{method}");
        let policy = self.inner.config.retry;
        let deadline = Instant::now() + policy.deadline;
        let mut retries = 0u32;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let error = match self
                .call_once(&path, method, request, attempt_timeout.min(remaining))
                .await
            {
                Ok(response) => return Ok(response),
                Err(error) => error,
            };
            if error.retry_class() == RetryClass::Fatal || retries >= policy.retries_max {
                return Err(error);
            }
            let delay = self.backoff_delay(retries);
            if Instant::now() + delay >= deadline {
                return Err(error);
            }
            self.inner.runtime.sleep(delay).await;
            retries += 1;
        }
    }

    async fn call_once<Req, Resp>(
        &self,
        path: &str,
        method: &'static str,
        request: &Req,
        attempt_timeout: Duration,
    ) -> Result<Resp, ClientError>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let slot = self.inner.next_slot.get();
        self.inner.next_slot.set(slot.wrapping_add(1));
        let channel = self.inner.pool.channel(slot).await?;
        let options = CallOptions::default().with_timeout(attempt_timeout);
        match channel.unary::<Req, Resp>(path, request, options).await {
            Ok(response) => Ok(response.into_inner()),
            Err(status) => {
                // A server's own UNAVAILABLE (overloaded, draining) keeps the
                // connection: reconnecting would only add load.
                if status.connection_lost() {
                    self.inner.pool.mark_broken(slot);
                }
                Err(ClientError::Status {
                    operation: method,
                    status,
                })
            }
        }
    }

    /// Sleeps the backoff delay of retry `attempt`.
    pub(crate) async fn backoff(&self, attempt: u32) {
        let delay = self.backoff_delay(attempt);
        self.inner.runtime.sleep(delay).await;
    }

    /// The backoff delay of retry `attempt`, jittered.
    fn backoff_delay(&self, attempt: u32) -> Duration {
        let unit = self.inner.jitter.borrow_mut().unit();
        self.inner.config.retry.backoff.delay(attempt, unit)
    }

    /// Random bits (producer ids).
    pub(crate) fn random_u64(&self) -> u64 {
        self.inner.jitter.borrow_mut().next_u64()
    }
}

/// Probes the pool every `interval` until the client is dropped.
async fn health_checks<R: Runtime>(client: std::rc::Weak<ClientInner<R>>, interval: Duration) {
    loop {
        let sleep = match client.upgrade() {
            Some(inner) => inner.runtime.sleep(interval),
            None => return,
        };
        sleep.await;
        let Some(inner) = client.upgrade() else {
            return;
        };
        let timeout = inner.config.request_timeout.min(interval);
        let healthy = inner.pool.check_health(timeout).await;
        tracing::trace!(healthy, "pool health check");
    }
}
