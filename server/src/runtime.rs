//! The shard-per-core runtime: one glommio executor per shard (pinned to its
//! CPU unless told otherwise), each binding the listen address with
//! SO_REUSEPORT and serving its own connections; startup (catalog, orphan
//! cleanup, partition recovery) and graceful shutdown.
//!
//! Listeners: the plaintext `listen` address and, when `[tls]` is set, a TLS
//! listener next to it; both bound on every shard.
//!
//! TLS reload, on SIGHUP: the signal thread re-reads the certificate, key,
//! client CA and CRL files; if they load, it publishes the configuration
//! and wakes every shard, which swaps it into its own acceptor (no lock on
//! the accept path). New handshakes use it; open connections keep theirs. A reload
//! that fails is logged and changes nothing.
//!
//! Shutdown, on SIGTERM/SIGINT: every shard stops taking new calls (health
//! NOT_SERVING, GOAWAY), lets in-flight calls finish within the drain grace,
//! waits for all shards to get there (in-flight calls may need other shards),
//! syncs and closes its partitions, and exits. A second signal exits at once.

use std::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorBuilder, Placement};
use shardlog_engine::Shard as EngineShard;

use crate::storage::ServerStorage;
use shardlog_wire::server::{Router, Server};
use shardlog_wire::services::health::{HealthReporter, ServingStatus};
use shardlog_wire::tls::TlsAcceptor;
use tracing::{error, info, warn};

use crate::catalog::{self, Catalog};
use crate::config::Config;
use crate::groups::GroupStore;
use crate::mesh::{Envelope, Executor, Mesh};
use crate::security::SecurityPolicy;
use crate::shard::ShardContext;

/// How often the main thread checks that every shard is alive.
const SHARD_WATCH_PERIOD: Duration = Duration::from_millis(50);
/// Poll period of the cross-shard rendezvous during startup and shutdown.
const RENDEZVOUS_POLL: Duration = Duration::from_millis(2);
/// Reload wake-ups queued per shard: one pending wake-up already makes the
/// shard read the latest configuration, so more are never needed.
const TLS_RELOAD_QUEUE_DEPTH: usize = 1;

/// The newest TLS configuration loaded; written by the signal thread on a
/// reload, read by each shard when woken for it (never on the accept path).
type LatestTlsConfig = Arc<std::sync::Mutex<Arc<rustls::ServerConfig>>>;

/// The addresses the server listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listening {
    /// The plaintext gRPC address, unless `listen = "off"`.
    pub plaintext: Option<SocketAddr>,
    /// The TLS gRPC address, when `[tls]` is on.
    pub tls: Option<SocketAddr>,
}

/// A shard's TLS configuration and its reload wake-ups.
struct ShardTls {
    latest: LatestTlsConfig,
    reloads: flume::Receiver<()>,
}

fn read_latest(latest: &LatestTlsConfig) -> Arc<rustls::ServerConfig> {
    // The lock only guards an Arc swap: a panic cannot leave it half-written.
    latest
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

/// Why the server could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Startup failed before serving.
    #[error("startup: {0}")]
    Startup(String),
    /// A shard failed.
    #[error("shard {shard}: {reason}")]
    Shard {
        /// Which shard.
        shard: usize,
        /// What happened.
        reason: String,
    },
}

/// Counts shards arriving at a point; each waits for all.
struct Rendezvous {
    arrived: AtomicUsize,
    total: usize,
}

impl Rendezvous {
    fn new(total: usize) -> Arc<Self> {
        Arc::new(Self {
            arrived: AtomicUsize::new(0),
            total,
        })
    }

    async fn arrive_and_wait(&self) {
        self.arrived.fetch_add(1, Ordering::AcqRel);
        while self.arrived.load(Ordering::Acquire) < self.total {
            glommio::timer::sleep(RENDEZVOUS_POLL).await;
        }
    }
}

/// What every shard thread gets.
struct ShardStart {
    id: usize,
    config: Arc<Config>,
    catalog: Catalog,
    mesh: MeshBuilder<Envelope, glommio::channels::channel_mesh::Full>,
    listen: Listening,
    tls: Option<ShardTls>,
    started: Arc<Rendezvous>,
    drained: Arc<Rendezvous>,
    closed: Arc<Rendezvous>,
    shutdown: flume::Receiver<()>,
    security: Arc<SecurityPolicy>,
}

/// Runs the server until shutdown. `on_listening` is called once with the
/// bound gRPC addresses (useful when a configured port is 0).
pub fn run(config: Config, on_listening: impl FnOnce(Listening)) -> Result<(), RunError> {
    let config = Arc::new(config);
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        RunError::Startup(format!(
            "create data dir {}: {e}",
            config.data_dir.display()
        ))
    })?;
    let _lock = lock_data_dir(&config.data_dir)?;
    let security = Arc::new(
        SecurityPolicy::from_config(&config).map_err(|e| RunError::Startup(e.to_string()))?,
    );
    if security.auth_enabled() {
        info!(tokens = security.token_count(), "authentication on");
    } else if let Some(exposed) = config
        .listen
        .into_iter()
        .chain(config.tls.listen)
        .find(|address| !address.ip().is_loopback())
    {
        warn!(listen = %exposed, "authentication is off on a non-loopback address: every client may read, write and delete every topic (see docs/security.md)");
    }
    let shards = config.shards;
    let catalog = catalog::load(&config.data_dir, shards as u32)
        .map_err(|e| RunError::Startup(e.to_string()))?;
    remove_orphan_partitions(&config.data_dir, &catalog)?;
    let tls_files = config.tls.files();
    let tls_latest: Option<LatestTlsConfig> = tls_files
        .as_ref()
        .map(shardlog_wire::tls::server_config)
        .transpose()
        .map_err(|e| RunError::Startup(format!("tls: {e}")))?
        .map(|config| Arc::new(std::sync::Mutex::new(config)));

    let mesh = MeshBuilder::full(shards, config.limits.cross_core_queue_depth);
    let (started, drained, closed) = (
        Rendezvous::new(shards),
        Rendezvous::new(shards),
        Rendezvous::new(shards),
    );
    let stopping = Arc::new(AtomicBool::new(false));
    let exited = Arc::new(AtomicUsize::new(0));
    let (reload_senders, reload_receivers): (Vec<_>, Vec<_>) = (0..shards)
        .map(|_| flume::bounded(TLS_RELOAD_QUEUE_DEPTH))
        .unzip();
    let tls_reload = tls_files
        .zip(tls_latest.clone())
        .map(|(files, latest)| TlsReload {
            files,
            latest,
            shards: reload_senders,
        });
    let shutdown_senders = install_signal_handler(shards, stopping.clone(), tls_reload)?;
    let mut listen = Listening {
        plaintext: config.listen,
        tls: config.tls.listen,
    };
    let mut handles = Vec::with_capacity(shards);
    for ((id, shutdown), reloads) in shutdown_senders
        .into_iter()
        .enumerate()
        .zip(reload_receivers)
    {
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let exited_counter = exited.clone();
        let start = ShardStart {
            id,
            config: config.clone(),
            catalog: catalog.clone(),
            mesh: mesh.clone(),
            listen,
            tls: tls_latest
                .clone()
                .map(|latest| ShardTls { latest, reloads }),
            started: started.clone(),
            drained: drained.clone(),
            closed: closed.clone(),
            shutdown,
            security: security.clone(),
        };
        let placement = if config.pin_cpus {
            Placement::Fixed(config.cpu_of_shard(id))
        } else {
            Placement::Unbound
        };
        // Executors are created in shard order: the mesh numbers its peers by
        // executor id, so peer id == shard id.
        let handle = LocalExecutorBuilder::new(placement)
            .name(&format!("shard-{id}"))
            .spawn(move || async move {
                let _exit = ExitCounter(exited_counter);
                let result = run_shard(start, bound_tx).await;
                if let Err(error) = &result {
                    error!(%error, "shard failed");
                }
                result
            })
            .map_err(|e| RunError::Startup(format!("start shard {id}: {e}")))?;
        // Shard 0 binds first so a configured port 0 becomes one real port
        // that every other shard then binds with SO_REUSEPORT.
        listen = bound_rx
            .recv()
            .map_err(|_| RunError::Startup(format!("shard {id} failed before binding")))?
            .map_err(RunError::Startup)?;
        handles.push(handle);
    }
    on_listening(listen);
    watch_shards(&exited, shards, &stopping);
    let mut outcome = Ok(());
    for (shard, handle) in handles.into_iter().enumerate() {
        let result = handle.join().map_err(|e| RunError::Shard {
            shard,
            reason: e.to_string(),
        });
        if let Err(error) = result.and_then(|inner| inner) {
            error!(%error, "shard stopped with an error");
            outcome = outcome.and(Err(error));
        }
    }
    outcome
}

/// Waits until every shard has stopped. A shard that stops before shutdown
/// was asked for (a panic: a broken invariant) takes the process down at
/// once: a half-dead server that still accepts connections is worse than a
/// restart, which recovers every partition from disk.
fn watch_shards(exited: &AtomicUsize, shards: usize, stopping: &AtomicBool) {
    loop {
        let gone = exited.load(Ordering::Acquire);
        if gone == shards {
            return;
        }
        if gone > 0 && !stopping.load(Ordering::Acquire) {
            error!("a shard stopped unexpectedly; exiting");
            std::process::exit(1);
        }
        std::thread::sleep(SHARD_WATCH_PERIOD);
    }
}

/// Counts a shard thread's end, including an end by panic (drop runs while
/// unwinding).
struct ExitCounter(Arc<AtomicUsize>);

impl Drop for ExitCounter {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
}

/// Binds `address` if set; the listener and its bound address.
fn bind(
    address: Option<SocketAddr>,
    what: &str,
) -> Result<Option<(glommio::net::TcpListener, SocketAddr)>, String> {
    let Some(address) = address else {
        return Ok(None);
    };
    let listener = glommio::net::TcpListener::bind(address)
        .map_err(|e| format!("bind {what} {address}: {e}"))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("{what} {address}: {e}"))?;
    Ok(Some((listener, local)))
}

/// A shard's bound listeners and their addresses.
struct Listeners {
    plaintext: Option<glommio::net::TcpListener>,
    tls: Option<glommio::net::TcpListener>,
    addresses: Listening,
}

/// Binds the shard's plaintext and TLS listeners.
fn bind_listeners(listen: Listening) -> Result<Listeners, String> {
    let plaintext = bind(listen.plaintext, "listen")?;
    let tls = bind(listen.tls, "tls.listen")?;
    let addresses = Listening {
        plaintext: plaintext.as_ref().map(|(_, address)| *address),
        tls: tls.as_ref().map(|(_, address)| *address),
    };
    Ok(Listeners {
        plaintext: plaintext.map(|(listener, _)| listener),
        tls: tls.map(|(listener, _)| listener),
        addresses,
    })
}

async fn run_shard(
    start: ShardStart,
    bound: std::sync::mpsc::Sender<Result<Listening, String>>,
) -> Result<(), RunError> {
    let id = start.id;
    let fail = |reason: String| RunError::Shard { shard: id, reason };
    let listeners = match bind_listeners(start.listen) {
        Ok(listeners) => listeners,
        Err(reason) => {
            let _ = bound.send(Err(reason.clone()));
            return Err(fail(reason));
        }
    };
    let local = listeners.addresses;
    let _ = bound.send(Ok(local));

    let (senders, receivers) = start
        .mesh
        .join()
        .await
        .map_err(|_| fail("joining the mesh failed".into()))?;
    let config = start.config;
    let mesh = Mesh::new(id, senders, config.limits.cross_core_inflight_max);
    let storage = ServerStorage::new(&config.testing);
    let engine = EngineShard::new(config.data_dir.clone(), storage);
    let groups =
        GroupStore::load(&config.data_dir, id, config.shards).map_err(|e| fail(e.to_string()))?;
    let shard = ShardContext::new(
        id,
        config.clone(),
        engine,
        start.catalog,
        groups,
        mesh.clone(),
        start.security,
    );

    let executor: Executor = {
        let shard = shard.clone();
        Rc::new(move |op, deadline, caller_gone| shard.clone().execute(op, deadline, caller_gone))
    };
    let mesh_task = glommio::spawn_local(mesh.clone().serve(receivers, executor)).detach();
    shard.open_owned_partitions().await;
    start.started.arrive_and_wait().await;

    let health = HealthReporter::new();
    let observer = crate::metrics::MetricsObserver::new(&shard);
    let server = Server::with_observer(
        build_router(&shard, &health),
        config.server_config(),
        observer,
    );
    let _ = shard.server.set(server.clone());
    health.set_serving_status("", ServingStatus::Serving);
    health.set_serving_status("shardlog.v1.Log", ServingStatus::Serving);
    let serving = listeners.plaintext.map(|listener| {
        let server = server.clone();
        glommio::spawn_local(async move { server.serve(listener).await }).detach()
    });
    let serving_tls = listeners
        .tls
        .zip(start.tls)
        .map(|(listener, tls)| spawn_tls_listener(id, &server, listener, tls));
    if id == 0 {
        spawn_metrics_endpoint(&shard, config.metrics_listen);
    }
    spawn_retention(&shard);
    if id == 0 {
        info!(address = ?local.plaintext, tls_address = ?local.tls, shards = config.shards, data_dir = %config.data_dir.display(), "serving");
    }

    let _ = start.shutdown.recv_async().await;
    info!(shard = id, "draining");
    shard.draining.set(true);
    health.set_all_not_serving();
    server.shutdown().await;
    drop(serving);
    drop(serving_tls);
    start.drained.arrive_and_wait().await;
    let closed = shard.engine.close().await;
    start.closed.arrive_and_wait().await;
    mesh.close();
    drop(mesh_task);
    closed.map_err(|e| fail(format!("closing partitions: {e}")))?;
    info!(shard = id, "stopped");
    Ok(())
}

/// Serves TLS on `listener` and applies the reloads sent to this shard.
fn spawn_tls_listener(
    shard: usize,
    server: &Server,
    listener: glommio::net::TcpListener,
    tls: ShardTls,
) -> (
    glommio::task::JoinHandle<Result<(), shardlog_wire::WireError>>,
    glommio::task::JoinHandle<()>,
) {
    let acceptor = TlsAcceptor::new(read_latest(&tls.latest));
    let serving = glommio::spawn_local({
        let server = server.clone();
        let acceptor = acceptor.clone();
        async move { server.serve_tls(listener, acceptor).await }
    })
    .detach();
    let reloading = glommio::spawn_local(async move {
        while tls.reloads.recv_async().await.is_ok() {
            acceptor.replace(read_latest(&tls.latest));
            info!(shard, "tls configuration reloaded");
        }
    })
    .detach();
    (serving, reloading)
}

fn build_router(shard: &Rc<ShardContext>, health: &HealthReporter) -> Router {
    let mut router = Router::new();
    crate::service::register(&mut router, shard);
    if shard.config.grpc_testing {
        shardlog_wire::services::testing::register(&mut router);
    }
    shardlog_wire::services::health::register(&mut router, health.clone());
    let mut services = router.service_names();
    services.push("grpc.health.v1.Health".to_owned());
    services.push("grpc.reflection.v1.ServerReflection".to_owned());
    services.push("grpc.reflection.v1alpha.ServerReflection".to_owned());
    services.sort();
    services.dedup();
    shardlog_wire::services::reflection::register(&mut router, services);
    if shard.security.auth_enabled() {
        install_authentication(&mut router, shard);
    }
    router
}

/// Authenticates every call but health checks before its handler runs
/// (handlers then authorise per topic). Holds the shard weakly: the router
/// is owned by the shard's server.
fn install_authentication(router: &mut Router, shard: &Rc<ShardContext>) {
    let shard = Rc::downgrade(shard);
    router.intercept(
        move |context: &shardlog_wire::CallContext, metadata: &shardlog_wire::Metadata| {
            let Some(shard) = shard.upgrade() else {
                return Err(shardlog_wire::Status::unavailable(
                    "server is shutting down",
                ));
            };
            shard
                .security
                .authenticate(context, metadata)
                .map_err(|failure| {
                    shard.metrics.record_auth_failure(failure);
                    crate::security::unauthenticated(failure)
                })
        },
    );
}

fn spawn_metrics_endpoint(shard: &Rc<ShardContext>, address: Option<SocketAddr>) {
    let Some(address) = address else { return };
    match glommio::net::TcpListener::bind(address) {
        Ok(listener) => {
            info!(%address, "metrics endpoint");
            glommio::spawn_local(crate::metrics::serve(listener, shard.clone())).detach();
        }
        Err(error) => warn!(%address, %error, "metrics endpoint disabled: bind failed"),
    }
}

fn spawn_retention(shard: &Rc<ShardContext>) {
    let interval = Duration::from_millis(shard.config.storage.retention_check_interval_ms.max(100));
    let queue = glommio::executor().create_task_queue(
        glommio::Shares::Static(100),
        glommio::Latency::NotImportant,
        "retention",
    );
    let shard = shard.clone();
    let task = glommio::spawn_local_into(
        async move {
            loop {
                glommio::timer::sleep(interval).await;
                if shard.draining.get() {
                    return;
                }
                let now_ms = crate::unix_now_ms();
                for partition in shard.engine.partitions() {
                    if let Err(error) = partition.enforce_retention(now_ms).await {
                        warn!(partition = ?partition.id(), %error, "retention failed");
                    }
                }
            }
        },
        queue,
    );
    if let Ok(task) = task {
        task.detach();
    }
}

/// Holds an exclusive `flock` on `<data_dir>/LOCK` so two servers never
/// share a data directory.
fn lock_data_dir(data_dir: &Path) -> Result<std::fs::File, RunError> {
    use std::os::fd::AsRawFd;
    let path = data_dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| RunError::Startup(format!("open {}: {e}", path.display())))?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if locked != 0 {
        return Err(RunError::Startup(format!(
            "data dir {} is in use by another shardlog process",
            data_dir.display()
        )));
    }
    Ok(file)
}

/// Removes partition directories the catalog does not know: a topic
/// creation or deletion interrupted by a crash (the catalog file is the
/// commit point). Only ever touches `<data_dir>/topics/`.
fn remove_orphan_partitions(data_dir: &Path, catalog: &Catalog) -> Result<(), RunError> {
    let topics_dir = data_dir.join("topics");
    let entries = match std::fs::read_dir(&topics_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(RunError::Startup(format!(
                "read {}: {e}",
                topics_dir.display()
            )));
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let Some(meta) = catalog.topic(&name) else {
            warn!(path = %path.display(), "removing topic directory unknown to the catalog");
            std::fs::remove_dir_all(&path)
                .map_err(|e| RunError::Startup(format!("remove {}: {e}", path.display())))?;
            continue;
        };
        for partition_entry in std::fs::read_dir(&path).into_iter().flatten().flatten() {
            let partition_name = partition_entry.file_name().to_string_lossy().into_owned();
            let known = partition_name
                .parse::<u32>()
                .is_ok_and(|p| p < meta.partition_count);
            if !known {
                let orphan = partition_entry.path();
                warn!(path = %orphan.display(), "removing partition directory unknown to the catalog");
                std::fs::remove_dir_all(&orphan)
                    .map_err(|e| RunError::Startup(format!("remove {}: {e}", orphan.display())))?;
            }
        }
    }
    crate::meta_store::sync_dir(&topics_dir).map_err(|e| RunError::Startup(e.to_string()))
}

/// What a SIGHUP reloads: the TLS files, published to every shard once
/// loaded.
struct TlsReload {
    files: shardlog_wire::tls::TlsFiles,
    latest: LatestTlsConfig,
    shards: Vec<flume::Sender<()>>,
}

impl TlsReload {
    /// Re-reads the files; on success every shard gets the new
    /// configuration, on failure nothing changes.
    fn reload(&self, generation: u64) {
        let config = match shardlog_wire::tls::server_config(&self.files) {
            Ok(config) => config,
            Err(error) => {
                error!(%error, generation, "tls reload failed; keeping the previous certificates");
                return;
            }
        };
        *self
            .latest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = config;
        for sender in &self.shards {
            // Full: a wake-up is pending and will read this configuration.
            // Disconnected: the shard has stopped.
            let _ = sender.try_send(());
        }
        info!(generation, "tls certificates reloaded from disk");
    }
}

/// Starts the thread that turns SIGTERM/SIGINT into a shutdown message per
/// shard (a second one exits immediately) and SIGHUP into a TLS reload.
fn install_signal_handler(
    shards: usize,
    stopping: Arc<AtomicBool>,
    tls_reload: Option<TlsReload>,
) -> Result<Vec<flume::Receiver<()>>, RunError> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(|e| RunError::Startup(format!("install signal handler: {e}")))?;
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..shards).map(|_| flume::bounded(1)).unzip();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut seen = 0;
            let mut reloads = 0_u64;
            for signal in signals.forever() {
                if signal == SIGHUP {
                    reloads += 1;
                    match &tls_reload {
                        Some(tls) => tls.reload(reloads),
                        None => info!("SIGHUP: nothing to reload (no [tls] listener)"),
                    }
                    continue;
                }
                seen += 1;
                if seen > 1 {
                    warn!(signal, "second signal: exiting now");
                    std::process::exit(130);
                }
                info!(signal, "shutting down");
                stopping.store(true, Ordering::Release);
                for sender in &senders {
                    let _ = sender.try_send(());
                }
            }
        })
        .map_err(|e| RunError::Startup(format!("spawn signal thread: {e}")))?;
    Ok(receivers)
}
