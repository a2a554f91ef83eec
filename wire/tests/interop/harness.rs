//! Test harness shared by the interop and probe tests: a glommio server with
//! the interop TestService, health and reflection on a free 127.0.0.1 port in
//! a background thread, and a runner for the external clients (Python,
//! Node) as subprocesses with a timeout.
//!
//! A missing client library fails the test with the install command; it
//! never passes silently.

// Shared by several test binaries; each uses a subset.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};
use shardlog_wire::proto::grpc::health::v1::{HealthCheckRequest, HealthCheckResponse};
use shardlog_wire::server::{Router, Server, ServerConfig};
use shardlog_wire::services::health::{HealthReporter, ServingStatus};
use shardlog_wire::services::{health, reflection, testing};
use shardlog_wire::{Request, Response, Status};

/// Install command printed when a Python client library is missing.
pub const PIP_INSTALL: &str = "pip install -r wire/tests/interop/requirements.txt";
/// Install command printed when the Node client libraries are missing.
pub const NPM_INSTALL: &str = "npm ci --prefix wire/tests/interop/node";

/// Longest a client subprocess may run before it is killed.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(90);
/// Longest the server may take to start listening.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(20);
/// How often the server thread checks whether the test asked it to stop.
const STOP_POLL_INTERVAL: Duration = Duration::from_millis(20);
/// In-flight calls' deadline when the test server drains.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// Test-only method flipping a health status: the request's `service` is
/// `"<name>=<SERVING|NOT_SERVING>"`, or `"=DRAIN"` to drain the reporter.
const HEALTH_CONTROL_PATH: &str = "/shardlog.test.HealthControl/Set";

/// A server running on its own glommio executor thread; stops on drop.
pub struct TestServer {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<ExecutorJoinHandle<()>>,
}

impl TestServer {
    /// Starts TestService + health + reflection (+ the health control
    /// method) on a free port with the default `ServerConfig`.
    pub fn start() -> TestServer {
        TestServer::start_with(config())
    }

    /// [`start`](Self::start) with `config` instead of the default one.
    pub fn start_with(config: ServerConfig) -> TestServer {
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = Arc::clone(&stop);
        let thread = LocalExecutorBuilder::new(Placement::Unbound)
            .name("wire-interop-server")
            .spawn(move || async move {
                let listener =
                    glommio::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
                let port = listener.local_addr().expect("listener address").port();
                let server = Server::new(router(), config);
                let stopper = {
                    let server = server.clone();
                    glommio::spawn_local(async move {
                        while !stop_flag.load(Ordering::Acquire) {
                            glommio::timer::sleep(STOP_POLL_INTERVAL).await;
                        }
                        server.shutdown().await;
                    })
                };
                port_tx.send(port).expect("test thread waits for the port");
                if let Err(error) = server.serve(listener).await {
                    eprintln!("test server stopped with {error}");
                }
                stopper.await;
            })
            .expect("server executor starts");
        let port = port_rx
            .recv_timeout(SERVER_START_TIMEOUT)
            .expect("server reports its port");
        TestServer {
            port,
            stop,
            thread: Some(thread),
        }
    }

    /// The port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The test servers' default configuration (a short drain grace).
pub fn config() -> ServerConfig {
    ServerConfig {
        drain_grace: DRAIN_GRACE,
        ..ServerConfig::default()
    }
}

fn router() -> Router {
    let mut router = Router::new();
    testing::register(&mut router);
    let reporter = HealthReporter::new();
    health::register(&mut router, reporter.clone());
    let control = reporter.clone();
    router.unary(
        HEALTH_CONTROL_PATH,
        move |request: Request<HealthCheckRequest>| {
            let reporter = control.clone();
            async move { set_health(&reporter, &request.get_ref().service) }
        },
    );
    let services = router.service_names();
    reflection::register(&mut router, services);
    for service in router.service_names() {
        reporter.set_serving_status(&service, ServingStatus::Serving);
    }
    router
}

fn set_health(
    reporter: &HealthReporter,
    command: &str,
) -> Result<Response<HealthCheckResponse>, Status> {
    let (service, status) = command
        .split_once('=')
        .ok_or_else(|| Status::invalid_argument("expected <service>=<status>"))?;
    let status = match status {
        "DRAIN" => {
            reporter.set_all_not_serving();
            ServingStatus::NotServing
        }
        "SERVING" => ServingStatus::Serving,
        "NOT_SERVING" => ServingStatus::NotServing,
        other => return Err(Status::invalid_argument(format!("status {other}"))),
    };
    reporter.set_serving_status(service, status);
    Ok(Response::new(HealthCheckResponse {
        status: status.into(),
    }))
}

/// `wire/tests/interop`.
pub fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

/// Fails the test (naming the install command) unless python3 and every
/// client module the scripts import are present.
pub fn require_python() {
    let probe = Command::new("python3")
        .current_dir(interop_dir())
        .args(["-c", "import common; common.require_modules()"])
        .output();
    match probe {
        Ok(output) if output.status.success() => {}
        Ok(output) => panic!(
            "Python client libraries missing: run `{PIP_INSTALL}`\n{}",
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(error) => {
            panic!("python3 not runnable ({error}): install Python 3, then `{PIP_INSTALL}`")
        }
    }
}

/// Fails the test (naming the install command) unless node and the
/// `@grpc/grpc-js` + `@grpc/proto-loader` modules are present.
pub fn require_node() {
    let modules = interop_dir().join("node/node_modules/@grpc");
    for module in ["grpc-js", "proto-loader"] {
        assert!(
            modules.join(module).is_dir(),
            "node module @grpc/{module} missing: run `{NPM_INSTALL}`"
        );
    }
    let version = Command::new("node").arg("--version").output();
    assert!(
        version.is_ok_and(|output| output.status.success()),
        "node not runnable: install Node.js, then `{NPM_INSTALL}`"
    );
}

/// What a client subprocess printed and how it ended.
pub struct ClientRun {
    /// Exit code; `None` if killed (timeout or signal).
    pub code: Option<i32>,
    /// stdout then stderr.
    pub output: String,
    /// Whether it was killed at [`CLIENT_TIMEOUT`].
    pub timed_out: bool,
}

/// Runs `program args` in `wire/tests/interop` with [`CLIENT_TIMEOUT`].
pub fn run_client(program: &str, args: &[&str]) -> ClientRun {
    let mut child = Command::new(program)
        .args(args)
        .current_dir(interop_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start {program}: {error}"));
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let (code, timed_out) = wait_with_timeout(&mut child, CLIENT_TIMEOUT);
    let mut output = stdout.join().unwrap_or_default();
    output.push_str(&stderr.join().unwrap_or_default());
    ClientRun {
        code,
        output,
        timed_out,
    }
}

/// Asserts the client exited 0, printing everything it said either way.
pub fn assert_client_passed(what: &str, run: &ClientRun) {
    println!("---- {what} output ----\n{}", run.output);
    assert!(
        !run.timed_out,
        "{what}: killed after {CLIENT_TIMEOUT:?}\n{}",
        run.output
    );
    assert_eq!(run.code, Some(0), "{what} failed:\n{}", run.output);
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        text
    })
}

/// Waits for `child`; kills it at `timeout`. Returns (exit code, timed out).
fn wait_with_timeout(child: &mut Child, timeout: Duration) -> (Option<i32>, bool) {
    const POLL_INTERVAL: Duration = Duration::from_millis(20);
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return (status.code(), false),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return (None, true);
            }
            Ok(None) => std::thread::sleep(POLL_INTERVAL),
            Err(error) => panic!("waiting for the client failed: {error}"),
        }
    }
}

/// Resets this process's peak resident set (VmHWM) to its current RSS, so
/// [`peak_rss_bytes`] then measures the peak from now on. False if the
/// kernel refused.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// This process's peak resident set size (VmHWM), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// This process's current resident set size (VmRSS), in bytes.
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
