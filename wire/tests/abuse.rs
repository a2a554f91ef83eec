//! HTTP/2 abuse against the wire server, driven by the Python attack
//! clients in `interop/abuse/attack_h2.py` (hyperframe + hpack, frames
//! written by hand): rapid reset, CONTINUATION flood, empty-DATA, PING and
//! SETTINGS floods, a zero-window reader, slowloris headers and 2,000 idle
//! connections, plus the per-source-IP connection cap.
//!
//! For each attack: the attacker's connections are cut within a bound (the
//! script checks it), the server's memory stays small (RSS sampled in this
//! process, where the server runs), and a well-behaved client's unary calls
//! keep succeeding with p99 within 2x the p99 measured just before, plus
//! [`P99_SLACK`] because this machine's two cores are shared and noisy.

#[path = "interop/harness.rs"]
mod harness;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};
use harness::{ClientRun, TestServer, assert_client_passed, require_python, run_client};
use shardlog_wire::Response;
use shardlog_wire::client::{CallOptions, Channel};
use shardlog_wire::server::ServerConfig;

const EMPTY_CALL: &str = "/grpc.testing.TestService/EmptyCall";
/// Server limits shortened so each attack is cut in seconds.
const IDLE_TIMEOUT: Duration = Duration::from_secs(4);
const REQUEST_HEADER_TIMEOUT: Duration = Duration::from_secs(2);
const SEND_STALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Idle connections the idle attack opens (the per-IP cap is raised above it).
const IDLE_CONNECTIONS: usize = 2000;
/// Peak server memory the idle attack may add per connection.
const IDLE_CONNECTION_BYTES_MAX: u64 = 64 * 1024;
/// Peak server memory any other attack may add (its connections come one
/// after another, so this is per attacking connection and then some).
const ATTACK_GROWTH_BYTES_MAX: u64 = 16 * 1024 * 1024;
/// The unary zero-window attack holds 16 responses of 1 MiB until the stall
/// timeout: bounded by what it asked for, not by how long it waits.
const ZERO_WINDOW_UNARY_GROWTH_BYTES_MAX: u64 = 48 * 1024 * 1024;
/// How long the flood attacks keep reconnecting and flooding.
const FLOOD_SECONDS: &str = "2";
/// Latency probe: pause between calls, calls before measuring, least samples.
const CALL_PACING: Duration = Duration::from_millis(2);
const WARMUP_CALLS: usize = 50;
const SAMPLES_MIN: usize = 200;
const BASELINE_DURATION: Duration = Duration::from_millis(1500);
/// Absolute allowance on top of 2x the normal p99: on a 2-core machine the server, the
/// attacker and the probe share both cores, and a contained handshake flood still put the
/// probe at 5.0 ms against a 1.4 ms baseline in a CI run. A flood that is not contained
/// starves the probe for tens of ms or more.
const P99_SLACK: Duration = Duration::from_millis(5);
/// RSS sampling period.
const RSS_SAMPLE_PERIOD: Duration = Duration::from_millis(5);

/// The tests of this file run one at a time: each one's servers, clients
/// and attackers would otherwise skew the others' RSS and latency samples.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn abuse_config() -> ServerConfig {
    ServerConfig {
        idle_timeout: Some(IDLE_TIMEOUT),
        request_header_timeout: REQUEST_HEADER_TIMEOUT,
        send_stall_timeout: Some(SEND_STALL_TIMEOUT),
        max_connections_per_ip: Some(4 * IDLE_CONNECTIONS as u32),
        ..harness::config()
    }
}

/// One attack: script arguments and the memory it may add.
struct Attack {
    name: &'static str,
    args: &'static [&'static str],
    growth_bytes_max: u64,
}

const ATTACKS: &[Attack] = &[
    Attack {
        name: "rapid_reset",
        args: &["--duration", FLOOD_SECONDS, "--cut-within", "5"],
        growth_bytes_max: ATTACK_GROWTH_BYTES_MAX,
    },
    // Within 2 s, far under the 10 s handshake timeout.
    Attack {
        name: "handshake_flood",
        args: &["--duration", FLOOD_SECONDS, "--cut-within", "2"],
        growth_bytes_max: ATTACK_GROWTH_BYTES_MAX,
    },
    Attack {
        name: "continuation_flood",
        args: &["--duration", FLOOD_SECONDS, "--cut-within", "5"],
        growth_bytes_max: ATTACK_GROWTH_BYTES_MAX,
    },
    Attack {
        name: "empty_data_flood",
        args: &["--duration", FLOOD_SECONDS, "--cut-within", "5"],
        growth_bytes_max: ATTACK_GROWTH_BYTES_MAX,
    },
    Attack {
        name: "ping_flood",
        args: &["--duration", FLOOD_SECONDS, "--cut-within", "5"],
        growth_bytes_max: ATTACK_GROWTH_BYTES_MAX,
    },
    Attack {
        name: "settings_flood",
        args: &["--duration", FLOOD_SECONDS, "--cut-within", "5"],
        growth_bytes_max: ATTACK_GROWTH_BYTES_MAX,
    },
    // Cut by the 2 s stall timeout: not before 1.5 s, within 6 s.
    Attack {
        name: "zero_window",
        args: &["--cut-within", "6", "--expect-cut-after", "1.5"],
        growth_bytes_max: ATTACK_GROWTH_BYTES_MAX,
    },
    // 16 unary calls for 1 MiB each, never read: the responses wait in
    // their calls (h2 queues nothing beyond the window) until the stall
    // timeout resets the streams and cuts the connection.
    Attack {
        name: "zero_window_unary",
        args: &["--cut-within", "6", "--expect-cut-after", "1.5"],
        growth_bytes_max: ZERO_WINDOW_UNARY_GROWTH_BYTES_MAX,
    },
    // Cut by the 2 s request-header timeout although a byte arrives every 100 ms.
    Attack {
        name: "slowloris",
        args: &["--cut-within", "6", "--expect-cut-after", "1.5"],
        growth_bytes_max: ATTACK_GROWTH_BYTES_MAX,
    },
    // Closed by the 4 s idle timeout (the clock starts once all are open).
    Attack {
        name: "idle_connections",
        args: &[
            "--connections",
            "2000",
            "--cut-within",
            "12",
            "--expect-cut-after",
            "1",
        ],
        growth_bytes_max: IDLE_CONNECTION_BYTES_MAX * IDLE_CONNECTIONS as u64,
    },
];

#[test]
fn every_attack_is_cut_while_normal_calls_keep_their_latency() {
    let _serial = serial();
    require_python();
    raise_fd_limit();
    let server = TestServer::start_with(abuse_config());
    let port = server.port();
    let probe = Probe::start(port);
    let mut failures = Vec::new();
    for attack in ATTACKS {
        // A latency miss is measured again once: a neighbour's build on
        // this shared machine can stall any few calls; a real regression
        // misses twice. Cut and memory failures are final.
        let mut outcome = run_attack(port, &probe, attack);
        if let Err(Failure::Latency(miss)) = &outcome {
            println!("{miss}; measuring once more");
            outcome = run_attack(port, &probe, attack);
        }
        if let Err(failure) = outcome {
            failures.push(failure.to_string());
        }
    }
    assert!(
        failures.is_empty(),
        "attacks not contained:\n{}",
        failures.join("\n")
    );
}

/// Why an attack was not contained.
enum Failure {
    /// Cut too late, or the server grew too much.
    Contained(String),
    /// Normal calls were too slow during the attack.
    Latency(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Contained(what) | Failure::Latency(what) => f.write_str(what),
        }
    }
}

fn run_attack(port: u16, probe: &Probe, attack: &'static Attack) -> Result<(), Failure> {
    let baseline = probe.latencies(Arc::new(AtomicBool::new(false)), BASELINE_DURATION);
    let rss_before = harness::rss_bytes().expect("VmRSS readable");
    let sampler = RssSampler::start();
    let done = Arc::new(AtomicBool::new(false));
    let script = spawn_attack(port, attack, done.clone());
    let during = probe.latencies(done.clone(), Duration::ZERO);
    let run = script.join().expect("attack thread");
    let peak = sampler.stop();
    let growth_bytes = peak.saturating_sub(rss_before);
    let (p99_normal, p99_attack) = (p99(baseline), p99(during.clone()));
    let bound = 2 * p99_normal + P99_SLACK;
    println!(
        "{}: p99 {p99_normal:?} normal, {p99_attack:?} under attack ({} calls, bound {bound:?}); \
         peak RSS growth {growth_bytes} bytes",
        attack.name,
        during.len(),
    );
    assert_client_passed(attack.name, &run);
    if growth_bytes > attack.growth_bytes_max {
        return Err(Failure::Contained(format!(
            "{}: server RSS grew {growth_bytes} bytes (max {})",
            attack.name, attack.growth_bytes_max
        )));
    }
    if p99_attack > bound {
        return Err(Failure::Latency(format!(
            "{}: normal calls' p99 {p99_attack:?} under attack exceeds {bound:?} (2 x {p99_normal:?} + {P99_SLACK:?})",
            attack.name
        )));
    }
    Ok(())
}

fn spawn_attack(
    port: u16,
    attack: &'static Attack,
    done: Arc<AtomicBool>,
) -> JoinHandle<ClientRun> {
    std::thread::spawn(move || {
        let port = port.to_string();
        let mut args = vec![
            "abuse/attack_h2.py",
            "--port",
            &port,
            "--attack",
            attack.name,
        ];
        args.extend_from_slice(attack.args);
        let run = run_client("python3", &args);
        done.store(true, Ordering::Release);
        run
    })
}

/// What the latency probe is asked to measure: until `stop` is set (or
/// for `duration` when it is non-zero).
struct ProbeRequest {
    stop: Arc<AtomicBool>,
    duration: Duration,
}

/// The latency probe: one glommio executor thread, started once so its
/// memory is in the RSS baseline of every attack.
struct Probe {
    requests: std::sync::mpsc::Sender<ProbeRequest>,
    samples: std::sync::mpsc::Receiver<Vec<Duration>>,
}

impl Probe {
    fn start(port: u16) -> Probe {
        let (requests, request_rx) = std::sync::mpsc::channel::<ProbeRequest>();
        let (sample_tx, samples) = std::sync::mpsc::channel();
        LocalExecutorBuilder::new(Placement::Unbound)
            .name("abuse-latency-probe")
            .spawn(move || async move {
                // Blocking here is fine: the executor has nothing else to do
                // between measurements.
                while let Ok(request) = request_rx.recv() {
                    let samples = probe_calls(port, &request.stop, request.duration).await;
                    if sample_tx.send(samples).is_err() {
                        return;
                    }
                }
            })
            .expect("spawn probe executor");
        Probe { requests, samples }
    }

    /// Sequential unary calls on a new connection, one every
    /// [`CALL_PACING`], after a warm-up: for `duration`, or until `stop` is
    /// set, and at least [`SAMPLES_MIN`] of them. Each must succeed.
    fn latencies(&self, stop: Arc<AtomicBool>, duration: Duration) -> Vec<Duration> {
        self.requests
            .send(ProbeRequest { stop, duration })
            .expect("probe running");
        self.samples.recv().expect("probe answers")
    }
}

async fn probe_calls(port: u16, stop: &AtomicBool, duration: Duration) -> Vec<Duration> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let stream = glommio::net::TcpStream::connect(addr)
        .await
        .expect("probe connects");
    let (channel, driver) = Channel::handshake(stream, &addr.to_string())
        .await
        .expect("probe handshake");
    glommio::spawn_local(driver).detach();
    let call = || async {
        let started = Instant::now();
        let _: Response<()> = channel
            .unary(EMPTY_CALL, &(), CallOptions::default())
            .await
            .expect("a normal call succeeds during the attack");
        started.elapsed()
    };
    for _ in 0..WARMUP_CALLS {
        call().await;
        glommio::timer::sleep(CALL_PACING).await;
    }
    let started = Instant::now();
    let mut samples = Vec::new();
    loop {
        let finished = if duration.is_zero() {
            stop.load(Ordering::Acquire)
        } else {
            started.elapsed() >= duration
        };
        if finished && samples.len() >= SAMPLES_MIN {
            return samples;
        }
        samples.push(call().await);
        glommio::timer::sleep(CALL_PACING).await;
    }
}

fn p99(mut samples: Vec<Duration>) -> Duration {
    assert!(!samples.is_empty(), "no latency samples");
    samples.sort_unstable();
    let rank = (samples.len() * 99).div_ceil(100);
    samples[rank.saturating_sub(1)]
}

/// Samples this process's RSS in a thread; [`stop`](Self::stop) gives the
/// largest sample (works where `/proc/self/clear_refs` is refused).
struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: JoinHandle<()>,
}

impl RssSampler {
    fn start() -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let thread = std::thread::spawn({
            let (stop, peak) = (stop.clone(), peak.clone());
            move || {
                while !stop.load(Ordering::Acquire) {
                    if let Some(rss) = harness::rss_bytes() {
                        peak.fetch_max(rss, Ordering::AcqRel);
                    }
                    std::thread::sleep(RSS_SAMPLE_PERIOD);
                }
            }
        });
        RssSampler { stop, peak, thread }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Release);
        self.thread.join().expect("RSS sampler");
        self.peak.load(Ordering::Acquire)
    }
}

/// Room for the idle attack's connections (each is a server-side fd here):
/// raises the soft RLIMIT_NOFILE towards the hard one if needed.
fn raise_fd_limit() {
    const FDS_NEEDED: libc::rlim_t = 3 * IDLE_CONNECTIONS as libc::rlim_t;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read or write the struct passed.
    let read = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    assert_eq!(read, 0, "getrlimit(RLIMIT_NOFILE) failed");
    if limit.rlim_cur < FDS_NEEDED {
        limit.rlim_cur = FDS_NEEDED.min(limit.rlim_max);
        // SAFETY: as above.
        let _ = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    }
    assert!(
        limit.rlim_cur >= FDS_NEEDED,
        "RLIMIT_NOFILE hard limit {} is below {FDS_NEEDED}: raise it (ulimit -Hn) to run this test",
        limit.rlim_max
    );
}

/// Connections from one IP beyond `max_connections_per_ip` are closed at
/// once (before any HTTP/2 byte), counted across two servers sharing one
/// table as the shards of a process do; closing one lets a new one in.
#[test]
fn connections_over_the_per_ip_cap_are_closed_at_once_across_shards() {
    let _serial = serial();
    const CAP: usize = 8;
    const READ_TIMEOUT: Duration = Duration::from_secs(10);
    let config = ServerConfig {
        max_connections_per_ip: Some(CAP as u32),
        ..harness::config()
    };
    // Clones share the per-IP table: two "shards".
    let shards = [
        TestServer::start_with(config.clone()),
        TestServer::start_with(config),
    ];
    let addrs: Vec<SocketAddr> = shards
        .iter()
        .map(|shard| SocketAddr::from(([127, 0, 0, 1], shard.port())))
        .collect();
    // The server's SETTINGS arrive on an admitted connection; a refused one
    // reads end-of-file.
    let admitted = |stream: &mut TcpStream| -> bool {
        stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .expect("timeout");
        let mut byte = [0u8; 1];
        matches!(stream.read(&mut byte), Ok(1))
    };
    let connect = |addr: SocketAddr| TcpStream::connect(addr).expect("connect");
    let mut open: Vec<TcpStream> = (0..CAP).map(|i| connect(addrs[i % 2])).collect();
    for stream in &mut open {
        assert!(admitted(stream), "a connection under the cap is served");
    }
    for addr in &addrs {
        let started = Instant::now();
        assert!(
            !admitted(&mut connect(*addr)),
            "connection over the cap is refused by every shard"
        );
        assert!(started.elapsed() < READ_TIMEOUT, "refused at once");
    }
    drop(open.pop());
    // The server notices the close asynchronously: retry briefly.
    let deadline = Instant::now() + READ_TIMEOUT;
    loop {
        if admitted(&mut connect(addrs[0])) {
            break;
        }
        assert!(Instant::now() < deadline, "a freed slot is never reused");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// grpcio with a keepalive PING every 100 ms (also between calls) keeps its
/// one connection and every call under the abuse limits.
#[test]
fn grpcio_with_eager_keepalive_is_not_cut() {
    let _serial = serial();
    require_python();
    let server = TestServer::start_with(abuse_config());
    let port = server.port().to_string();
    let run = run_client("python3", &["abuse/keepalive_client.py", "--port", &port]);
    assert_client_passed("grpcio keepalive client", &run);
    drop(server);
    // Negative control: the client really pings that often, since a limit
    // of 3 no-op frames per second cuts it.
    let strict = TestServer::start_with(ServerConfig {
        max_noop_frames_per_second: 3,
        ..abuse_config()
    });
    let port = strict.port().to_string();
    let run = run_client("python3", &["abuse/keepalive_client.py", "--port", &port]);
    println!("---- negative control ----\n{}", run.output);
    assert_eq!(
        run.code,
        Some(1),
        "a 3/s no-op frame limit must cut a 10/s pinger"
    );
}

/// The abuse limits leave legitimate streams alone: a server stream that
/// is quiet for longer than the send-stall timeout (a Subscribe waiting for
/// records) and a client that reads a large stream slowly but steadily
/// both complete.
#[test]
fn quiet_streams_and_slow_readers_are_not_cut() {
    let _serial = serial();
    use shardlog_wire::proto::grpc::testing::{
        ResponseParameters, StreamingOutputCallRequest, StreamingOutputCallResponse,
    };
    const STREAMING_OUTPUT_CALL: &str = "/grpc.testing.TestService/StreamingOutputCall";
    /// Longer than the stall timeout: a pause that is not a stall.
    const QUIET_US: i32 = 3_000_000;
    /// Messages read slowly, each paused after, and their size (over the
    /// stream window in total, so the server waits for capacity many times).
    const SLOW_MESSAGES: usize = 40;
    const SLOW_MESSAGE_BYTES: i32 = 64 * 1024;
    const READ_PAUSE: Duration = Duration::from_millis(50);
    let server = TestServer::start_with(abuse_config());
    let port = server.port();
    LocalExecutorBuilder::new(Placement::Unbound)
        .name("abuse-legitimate-client")
        .spawn(move || async move {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let stream = glommio::net::TcpStream::connect(addr)
                .await
                .expect("connect");
            let (channel, driver) = Channel::handshake(stream, &addr.to_string())
                .await
                .expect("handshake");
            glommio::spawn_local(driver).detach();
            let parameters = |size, interval_us| ResponseParameters {
                size,
                interval_us,
                ..ResponseParameters::default()
            };
            let quiet = StreamingOutputCallRequest {
                response_parameters: vec![parameters(10, 0), parameters(10, QUIET_US)],
                ..StreamingOutputCallRequest::default()
            };
            let slow = StreamingOutputCallRequest {
                response_parameters: vec![parameters(SLOW_MESSAGE_BYTES, 0); SLOW_MESSAGES],
                ..StreamingOutputCallRequest::default()
            };
            for (what, request, pause) in [
                ("quiet stream", quiet, Duration::ZERO),
                ("slow reader", slow, READ_PAUSE),
            ] {
                let response = channel
                    .server_streaming::<_, StreamingOutputCallResponse>(
                        STREAMING_OUTPUT_CALL,
                        &request,
                        CallOptions::default(),
                    )
                    .await
                    .unwrap_or_else(|status| panic!("{what}: {status:?}"));
                let mut messages = response.into_inner();
                let mut received = 0;
                while let Some(_message) = messages
                    .message()
                    .await
                    .unwrap_or_else(|status| panic!("{what}: {status:?}"))
                {
                    received += 1;
                    if !pause.is_zero() {
                        glommio::timer::sleep(pause).await;
                    }
                }
                assert_eq!(received, request.response_parameters.len(), "{what}");
            }
        })
        .expect("spawn client executor")
        .join()
        .expect("client finished");
}
