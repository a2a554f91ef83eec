//! The runtime boundary of the client library: how to open a TCP stream,
//! spawn a local task and sleep. Implemented for glommio (always) and tokio
//! (feature `tokio`; tasks go to `tokio::task::spawn_local`, so run inside a
//! `LocalSet` or a current-thread runtime with one).
//!
//! Every client object is `!Send` and lives on the executor that made it.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::Timer;

/// A boxed, single-threaded future.
pub type LocalBoxFuture<T> = Pin<Box<dyn Future<Output = T> + 'static>>;

/// I/O and task spawning for the client library.
pub trait Runtime: Clone + 'static {
    /// The byte stream a connection runs over.
    type Io: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin + 'static;

    /// Opens a TCP connection to `addr` (with TCP_NODELAY).
    fn connect(&self, addr: SocketAddr) -> LocalBoxFuture<io::Result<Self::Io>>;

    /// Runs `task` in the background on the current thread.
    fn spawn(&self, task: LocalBoxFuture<()>);

    /// A future resolving after `duration`.
    fn sleep(&self, duration: Duration) -> LocalBoxFuture<()>;

    /// The timer that enforces call deadlines of channels on this runtime.
    fn timer(&self) -> Arc<dyn Timer>;
}

/// The glommio runtime (use inside a glommio executor).
#[derive(Debug, Clone, Copy, Default)]
pub struct GlommioRuntime;

impl Runtime for GlommioRuntime {
    type Io = glommio::net::TcpStream;

    fn connect(&self, addr: SocketAddr) -> LocalBoxFuture<io::Result<Self::Io>> {
        Box::pin(async move {
            let stream = glommio::net::TcpStream::connect(addr)
                .await
                .map_err(io::Error::from)?;
            stream.set_nodelay(true).map_err(io::Error::from)?;
            Ok(stream)
        })
    }

    fn spawn(&self, task: LocalBoxFuture<()>) {
        glommio::spawn_local(task).detach();
    }

    fn sleep(&self, duration: Duration) -> LocalBoxFuture<()> {
        Box::pin(glommio::timer::sleep(duration))
    }

    fn timer(&self) -> Arc<dyn Timer> {
        Arc::new(super::GlommioTimer)
    }
}

#[cfg(feature = "tokio")]
pub use tokio_runtime::{TokioRuntime, TokioTimer};

#[cfg(feature = "tokio")]
mod tokio_runtime {
    use super::*;
    use tokio_util::compat::{Compat, TokioAsyncReadCompatExt as _};

    /// The tokio runtime: tokio TCP and timers, tasks on
    /// `tokio::task::spawn_local` (needs a `LocalSet`).
    #[derive(Debug, Clone, Copy, Default)]
    pub struct TokioRuntime;

    /// [`Timer`] on tokio's timers.
    #[derive(Debug, Clone, Copy, Default)]
    pub struct TokioTimer;

    impl Timer for TokioTimer {
        fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()>>> {
            Box::pin(tokio::time::sleep(duration))
        }
    }

    impl Runtime for TokioRuntime {
        type Io = Compat<tokio::net::TcpStream>;

        fn connect(&self, addr: SocketAddr) -> LocalBoxFuture<io::Result<Self::Io>> {
            Box::pin(async move {
                let stream = tokio::net::TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                Ok(stream.compat())
            })
        }

        fn spawn(&self, task: LocalBoxFuture<()>) {
            drop(tokio::task::spawn_local(task));
        }

        fn sleep(&self, duration: Duration) -> LocalBoxFuture<()> {
            Box::pin(tokio::time::sleep(duration))
        }

        fn timer(&self) -> Arc<dyn Timer> {
            Arc::new(TokioTimer)
        }
    }
}

#[cfg(all(test, feature = "tokio"))]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::client::{ChannelConfig, Pool};
    use crate::server::{Router, Server, ServerConfig};
    use crate::services::health::{HealthReporter, register};

    /// The tokio runtime end to end: connect, spawn the connection
    /// drivers, deadlines on tokio timers, a health probe over each pooled
    /// connection of a wire server running on glommio.
    #[test]
    fn tokio_runtime_pool_connects_and_probes_health() {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let server_stop = stop.clone();
        let server = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(move || async move {
                let mut router = Router::new();
                register(&mut router, HealthReporter::new());
                let server = Server::new(router, ServerConfig::default());
                let listener = glommio::net::TcpListener::bind("127.0.0.1:0").expect("bind");
                addr_tx
                    .send(listener.local_addr().expect("addr"))
                    .expect("send addr");
                let serving = server.clone();
                glommio::spawn_local(async move { serving.serve(listener).await }).detach();
                while !server_stop.load(Ordering::Acquire) {
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                }
                server.shutdown().await;
            })
            .expect("server executor");
        let addr = addr_rx.recv().expect("server address");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let healthy = tokio::task::LocalSet::new().block_on(&runtime, async move {
            let pool = Pool::new(TokioRuntime, addr, 2, ChannelConfig::default()).expect("pool");
            pool.channel(0).await.expect("connect 0");
            pool.channel(1).await.expect("connect 1");
            assert_eq!(pool.live_connections(), 2);
            pool.check_health(Duration::from_secs(5)).await
        });
        stop.store(true, Ordering::Release);
        server.join().expect("server thread");
        assert_eq!(healthy, 2, "both pooled connections answer SERVING");
    }
}
