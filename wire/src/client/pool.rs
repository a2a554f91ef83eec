//! A pool of HTTP/2 connections to one server address: a fixed number of
//! slots, each holding at most one live [`Channel`]; a slot whose
//! connection ended (its driver returned) or failed a call is reconnected
//! on next use. Health is tracked for free by watching the driver, and can
//! be probed actively with `grpc.health.v1.Health/Check`.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use super::error::ClientError;
use super::runtime::Runtime;
use super::sync::Notify;
use super::{CallOptions, Channel, ChannelConfig};
use crate::proto::grpc::health::v1 as health;
use crate::tls::ClientTls;

/// Upper bound of [`Pool`] sizes: more connections to one server than
/// this only adds HTTP/2 overhead.
pub const POOL_CONNECTIONS_MAX: usize = 64;

/// Default bound of one connection attempt (TCP, TLS and HTTP/2
/// handshakes): without one, a blackholed address holds a caller for the
/// kernel's SYN retries (about 2 minutes).
pub const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

/// One live connection and its liveness flag (cleared when the driver
/// future returns, i.e. the connection is gone).
struct Live {
    channel: Channel,
    alive: Rc<Cell<bool>>,
}

#[derive(Default)]
struct PoolSlot {
    live: RefCell<Option<Live>>,
    connecting: Cell<bool>,
    connected: Notify,
}

/// Holds a slot's `connecting` flag for one attempt; clearing it and waking
/// the waiters on drop too, so a caller that abandons the attempt (a
/// timeout, a `select!`) cannot leave the slot waiting for ever.
struct ConnectingGuard<'a>(&'a PoolSlot);

impl<'a> ConnectingGuard<'a> {
    fn take(slot: &'a PoolSlot) -> ConnectingGuard<'a> {
        slot.connecting.set(true);
        ConnectingGuard(slot)
    }
}

impl Drop for ConnectingGuard<'_> {
    fn drop(&mut self) {
        self.0.connecting.set(false);
        self.0.connected.notify();
    }
}

/// Connections to one server address.
pub struct Pool<R: Runtime> {
    runtime: R,
    addr: SocketAddr,
    channel_config: ChannelConfig,
    /// When set, every connection does a TLS handshake before HTTP/2.
    tls: Option<ClientTls>,
    connect_timeout: Duration,
    slots: Vec<PoolSlot>,
}

impl<R: Runtime> Pool<R> {
    /// A pool of `connections` slots (connected lazily).
    pub fn new(
        runtime: R,
        addr: SocketAddr,
        connections: usize,
        mut channel_config: ChannelConfig,
    ) -> Result<Pool<R>, ClientError> {
        if connections == 0 || connections > POOL_CONNECTIONS_MAX {
            return Err(ClientError::InvalidConfig {
                setting: "connections",
                reason: format!("{connections} not in 1..={POOL_CONNECTIONS_MAX}"),
            });
        }
        channel_config.timer = runtime.timer();
        let slots = (0..connections).map(|_| PoolSlot::default()).collect();
        Ok(Pool {
            runtime,
            addr,
            channel_config,
            tls: None,
            connect_timeout: CONNECT_TIMEOUT_DEFAULT,
            slots,
        })
    }

    /// Bounds each connection attempt (default [`CONNECT_TIMEOUT_DEFAULT`]).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Pool<R> {
        self.connect_timeout = timeout;
        self
    }

    /// Makes every connection of the pool use TLS.
    pub fn with_tls(mut self, tls: ClientTls) -> Pool<R> {
        self.tls = Some(tls);
        self
    }

    /// The number of slots.
    pub fn size(&self) -> usize {
        self.slots.len()
    }

    /// The server address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The channel of slot `index % size`, connecting (one attempt) if the
    /// slot has no live connection. Concurrent callers share one attempt.
    pub async fn channel(&self, index: usize) -> Result<Channel, ClientError> {
        let slot = &self.slots[index % self.slots.len()];
        loop {
            if let Some(live) = &*slot.live.borrow()
                && live.alive.get()
            {
                return Ok(live.channel.clone());
            }
            if !slot.connecting.get() {
                break;
            }
            let waiting = slot.connected.notified();
            waiting.await;
        }
        let attempt = ConnectingGuard::take(slot);
        let live = self.connect_within_timeout().await?;
        let channel = live.channel.clone();
        *slot.live.borrow_mut() = Some(live);
        drop(attempt);
        Ok(channel)
    }

    async fn connect_within_timeout(&self) -> Result<Live, ClientError> {
        let timeout = self.connect_timeout;
        let expired = async {
            self.runtime.sleep(timeout).await;
            Err(ClientError::Connect {
                addr: self.addr.to_string(),
                reason: format!("no connection within {timeout:?}"),
            })
        };
        futures_lite::future::or(self.connect(), expired).await
    }

    /// Drops slot `index`'s connection (after a transport failure on it);
    /// the next [`channel`](Self::channel) reconnects.
    pub fn mark_broken(&self, index: usize) {
        let slot = &self.slots[index % self.slots.len()];
        slot.live.borrow_mut().take();
    }

    /// Slots with a live connection.
    pub fn live_connections(&self) -> usize {
        self.slots
            .iter()
            .filter(|slot| slot.live.borrow().as_ref().is_some_and(|l| l.alive.get()))
            .count()
    }

    /// Probes every live connection with `grpc.health.v1.Health/Check`
    /// (timeout `timeout`) and drops those that fail or report anything
    /// but SERVING. Returns the number of healthy connections.
    pub async fn check_health(&self, timeout: Duration) -> usize {
        let mut healthy = 0;
        for index in 0..self.slots.len() {
            let channel = match &*self.slots[index].live.borrow() {
                Some(live) if live.alive.get() => live.channel.clone(),
                _ => continue,
            };
            let request = health::HealthCheckRequest {
                service: String::new(),
            };
            let options = CallOptions::default().with_timeout(timeout);
            let reply = channel
                .unary::<_, health::HealthCheckResponse>(
                    "/grpc.health.v1.Health/Check",
                    &request,
                    options,
                )
                .await;
            let serving = health::health_check_response::ServingStatus::Serving as i32;
            match reply {
                Ok(reply) if reply.get_ref().status == serving => healthy += 1,
                _ => self.mark_broken(index),
            }
        }
        healthy
    }

    async fn connect(&self) -> Result<Live, ClientError> {
        let addr = self.addr;
        let failed = |reason: String| ClientError::Connect {
            addr: addr.to_string(),
            reason,
        };
        let stream = self
            .runtime
            .connect(addr)
            .await
            .map_err(|error| failed(error.to_string()))?;
        let authority = addr.to_string();
        let config = self.channel_config.clone();
        let (channel, driver): (Channel, futures_util::future::LocalBoxFuture<'static, ()>) =
            match &self.tls {
                None => {
                    let (channel, driver) = Channel::handshake_with(stream, &authority, config)
                        .await
                        .map_err(|error| failed(error.to_string()))?;
                    (channel, Box::pin(driver))
                }
                Some(tls) => {
                    let stream = futures_rustls::TlsConnector::from(tls.config.clone())
                        .connect(tls.server_name.clone(), stream)
                        .await
                        .map_err(|error| failed(format!("tls handshake: {error}")))?;
                    let (channel, driver) = Channel::handshake_with(stream, &authority, config)
                        .await
                        .map_err(|error| failed(error.to_string()))?;
                    (channel, Box::pin(driver))
                }
            };
        let alive = Rc::new(Cell::new(true));
        let flag = alive.clone();
        self.runtime.spawn(Box::pin(async move {
            driver.await;
            flag.set(false);
        }));
        Ok(Live { channel, alive })
    }
}
