//! `bench-suite`: the standard benchmark suite in one command. For each
//! scenario and run it starts a fresh server (shardlog with `--shards 1`, or
//! the tonic peer) pinned to one core, drives it with `shardlog-load` pinned
//! to another, interleaving the two servers run by run so machine drift hits
//! both alike; it also measures the disk's own limit (`disk-limit`) and the
//! loopback HTTP/2 floor (empty unary on our wire stack) in the same run.
//! It prints and writes the medians and ratios as the `## Suite` section of
//! `docs/benchmarks.md`, and SVG plots under `docs/plots/`.
//!
//! Build, then run (binaries are looked up next to this one):
//! `cargo build --release -p shardlog-server -p shardlog-benches --features peer-tonic --bins`
//! `target/release/bench-suite` (full, ~15 min) or `bench-suite --smoke` (< 1 min, writes nothing
//! unless `--out` is given). Without the peer binary only shardlog runs.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use plotters::prelude::*;
use serde_json::Value;

/// How long a server may take to accept connections.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a stopped server may take to exit before it is killed.
const SERVER_STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Most runs per scenario and server.
const RUNS_MAX: usize = 15;
/// Longest wait for the device to finish discarding a scenario's deleted data.
const SETTLE_MAX: Duration = Duration::from_secs(30);
/// Percentiles drawn in the latency plots (a subset of the reports').
const PLOTTED_PERCENTILES: [f64; 6] = [50.0, 90.0, 99.0, 99.9, 99.99, 100.0];

#[derive(Debug, Parser)]
#[command(about = "shardlog's standard benchmark suite: shardlog vs the tonic peer, side by side")]
struct Args {
    /// Tiny durations and few scenarios (CI); writes nothing unless --out is given.
    #[arg(long)]
    smoke: bool,
    /// Runs per scenario and server (medians are taken over them).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Measured seconds of each load run.
    #[arg(long, default_value_t = 3.0)]
    duration_s: f64,
    /// Warm-up seconds of each load run.
    #[arg(long, default_value_t = 1.0)]
    warmup_s: f64,
    /// Directory holding the servers' data dirs and the disk test file.
    #[arg(long, default_value = "./bench-suite-data")]
    data_dir: PathBuf,
    /// CPU of the server under test.
    #[arg(long, default_value_t = 0)]
    server_cpu: usize,
    /// CPU of the load generator.
    #[arg(long, default_value_t = 1)]
    client_cpu: usize,
    /// Directory of the binaries (default: this binary's).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Markdown file whose `## Suite` section is replaced.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Directory of the SVG plots (default: `plots/` next to --out).
    #[arg(long)]
    plots: Option<PathBuf>,
    /// Only scenarios whose name contains this.
    #[arg(long)]
    only: Option<String>,
    /// Measured seconds of the overload scenario (default: 10x --duration-s).
    #[arg(long)]
    overload_s: Option<f64>,
    /// Offered single-record produce rate of the overload scenario (req/s).
    #[arg(long, default_value_t = 40_000.0)]
    overload_rate: f64,
    /// Seconds to wait per GiB deleted after a scenario, before the next one starts: the
    /// device may still be discarding the freed blocks (ext4 mounted with `discard`), which
    /// stalls every fdatasync for seconds.
    #[arg(long, default_value_t = 3.0)]
    settle_s_per_gib: f64,
}

/// A server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Server {
    Shardlog,
    /// shardlog with `[storage] prezero_segments = false` (pre-zeroing's side-by-side control).
    ShardlogPrezeroOff,
    Peer,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Shardlog => "shardlog",
            Server::ShardlogPrezeroOff => "shardlog, prezero off",
            Server::Peer => "tonic peer",
        }
    }
}

/// One load invocation of a scenario.
#[derive(Debug, Clone)]
enum Step {
    /// Fixed arguments.
    Fixed(Vec<String>),
    /// A rate sweep with this p99 bound in ms; its best rate feeds `AtFraction`.
    Sweep(Vec<String>, f64),
    /// Open loop at this fraction of the last sweep's best rate.
    AtFraction(Vec<String>, f64, &'static str),
    /// Fixed arguments, run 10x the usual duration (memory under overload).
    Overload(Vec<String>),
}

/// One scenario: steps run against one fresh server per run.
#[derive(Debug, Clone)]
struct Scenario {
    name: &'static str,
    what: &'static str,
    peer: bool,
    /// Also run shardlog with pre-zeroing off, interleaved (its control).
    prezero_off: bool,
    grpc_testing: bool,
    /// shardlog's `[storage]` settings for this scenario (`key = value` lines; none: defaults).
    storage: &'static [&'static str],
    /// The scenario's warm-up is at least this long (a steady state takes time to reach).
    warmup_s_min: f64,
    steps: Vec<Step>,
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn scenarios(smoke: bool) -> Vec<Scenario> {
    let batched = ["--batch-records", "1000", "--record-bytes", "100"];
    let single = ["--batch-records", "1", "--record-bytes", "100"];
    // The client library's Producer: single records, batches of up to 1000 or 1 ms linger.
    let producer = [
        "--shape",
        "producer",
        "--batch-records",
        "1000",
        "--record-bytes",
        "100",
        "--linger-ms",
        "1",
    ];
    let with = |base: &[&str], extra: &[&str]| {
        let mut all = args(base);
        all.extend(args(extra));
        all
    };
    let mut list = vec![
        Scenario {
            name: "batched-closed",
            what: "durable batched produce, 1000 x 100 B per batch, 1 producer closed loop, 1 partition",
            peer: true,
            prezero_off: false,
            grpc_testing: false,
            storage: &[],
            warmup_s_min: 0.0,
            steps: vec![Step::Fixed(with(&batched, &["--closed-loop", "1"]))],
        },
        Scenario {
            name: "batched-sweep",
            what: "durable batched produce, 1000 x 100 B, open-loop rate sweep (p99 <= 50 ms), 4 connections",
            peer: true,
            prezero_off: false,
            grpc_testing: false,
            storage: &[],
            warmup_s_min: 0.0,
            steps: vec![Step::Sweep(
                with(
                    &batched,
                    &["--rate", "100", "--connections", "4", "--sweep-steps", "3"],
                ),
                50.0,
            )],
        },
        Scenario {
            name: "single-unary",
            what: "single-record unary durable produce: sweep (p99 <= 50 ms), then 80% and 50% of that max",
            peer: true,
            prezero_off: false,
            grpc_testing: false,
            storage: &[],
            warmup_s_min: 0.0,
            steps: vec![
                Step::Sweep(
                    with(
                        &single,
                        &["--rate", "2000", "--connections", "4", "--sweep-steps", "3"],
                    ),
                    50.0,
                ),
                Step::AtFraction(with(&single, &["--connections", "4"]), 0.8, "80% of max"),
                Step::AtFraction(with(&single, &["--connections", "4"]), 0.5, "50% of max"),
            ],
        },
        Scenario {
            name: "producer-client",
            what: "the client library's Producer (batching, idempotent, pipelined over ProduceStream): \
                   single 100 B records handed to one producer on 1 connection, batches of up to 1000 \
                   records or 1 ms linger, 1 partition, durable; open-loop rate sweep in records/s \
                   (p99 send-to-ack <= 50 ms like the other sweeps; the client target is 5 ms) from 100,000 records/s",
            peer: true,
            prezero_off: false,
            grpc_testing: false,
            storage: &[],
            warmup_s_min: 0.0,
            steps: vec![Step::Sweep(
                with(&producer, &["--rate", "100000", "--sweep-steps", "3"]),
                50.0,
            )],
        },
    ];
    if smoke {
        return list;
    }
    list.push(Scenario {
        name: "producer-steady",
        what: "the producer-client load in a steady state with retention: shardlog with 64 MiB segments and \
               128 MiB retention, so rolls reuse retired segments (the peer keeps its own layout); \
               open-loop sweep in records/s for the client target's bound, p99 send-to-ack <= 5 ms, from \
               400,000 records/s; warm-up at least 8 s (three segments at 400,000 records/s: recycling \
               has begun before the first measured second)",
        peer: true,
        prezero_off: false,
        grpc_testing: false,
        storage: &["segment_bytes_max = 67108864", "retention_bytes_max = 134217728"],
        warmup_s_min: 8.0,
        steps: vec![Step::Sweep(
            with(&producer, &["--rate", "400000", "--sweep-steps", "3"]),
            5.0,
        )],
    });
    list.extend([
        Scenario {
            name: "produce-stream",
            what: "ProduceStream pipelined, 100-record batches, 4 streams on 1 connection, 2000 batches/s",
            peer: true,
            prezero_off: false,
            grpc_testing: false,
            storage: &[],
            warmup_s_min: 0.0,
            steps: vec![Step::Fixed(args(&[
                "--shape", "produce-stream", "--batch-records", "100", "--streams", "4", "--rate", "2000",
            ]))],
        },
        Scenario {
            name: "append",
            what: "Append client stream (fire and forget), 100-record batches, 4 streams, 2000 batches/s",
            peer: false,
            prezero_off: false,
            grpc_testing: false,
            storage: &[],
            warmup_s_min: 0.0,
            steps: vec![Step::Fixed(args(&[
                "--shape", "append", "--batch-records", "100", "--streams", "4", "--rate", "2000",
            ]))],
        },
        Scenario {
            name: "subscribe-16",
            what: "Subscribe fan-out: 16 subscribers on 4 partitions, 100-record batches at 500 batches/s",
            peer: false,
            prezero_off: false,
            grpc_testing: false,
            storage: &[],
            warmup_s_min: 0.0,
            steps: vec![Step::Fixed(args(&[
                "--shape", "subscribe", "--subscribers", "16", "--partitions", "4", "--batch-records", "100",
                "--rate", "500", "--connections", "4",
            ]))],
        },
        Scenario {
            name: "fetch",
            what: "unary Fetch of 100 records at random acked offsets, 2000 req/s",
            peer: true,
            prezero_off: false,
            grpc_testing: false,
            storage: &[],
            warmup_s_min: 0.0,
            steps: vec![Step::Fixed(args(&[
                "--shape", "fetch", "--batch-records", "100", "--partitions", "4", "--rate", "2000",
            ]))],
        },
    ]);
    list.push(Scenario {
        name: "overload-unary",
        what: "overload: single-record unary produce offered at --overload-rate (default 40,000 req/s) on 16 \
               connections, far above what either server sustains here, for --overload-s (default 10x the usual \
               duration); server RSS over the run, refusals by code",
        peer: true,
        prezero_off: false,
        grpc_testing: false,
        storage: &[],
        warmup_s_min: 0.0,
        steps: vec![Step::Overload(args(&[
            "--batch-records", "1", "--connections", "16", "--timeout-ms", "2000",
        ]))],
    });
    for (name, partitions) in [
        ("partitions-1", "1"),
        ("partitions-64", "64"),
        ("partitions-1024", "1024"),
    ] {
        list.push(Scenario {
            name,
            what: "unary produce of 100-record batches over N partitions (round robin), 2000 batches/s, 4 connections; \
                   shardlog also with pre-zeroing off",
            peer: true,
            prezero_off: true,
            grpc_testing: false,
            storage: &[],
            warmup_s_min: 0.0,
            steps: vec![Step::Fixed(args(&[
                "--batch-records", "100", "--partitions", partitions, "--rate", "2000", "--connections", "4",
            ]))],
        });
    }
    for (name, connections) in [
        ("connections-1", "1"),
        ("connections-16", "16"),
        ("connections-256", "256"),
    ] {
        list.push(Scenario {
            name,
            what: "single-record unary produce over N connections, 5000 req/s",
            peer: true,
            prezero_off: false,
            grpc_testing: false,
            storage: &[],
            warmup_s_min: 0.0,
            steps: vec![Step::Fixed(args(&[
                "--batch-records",
                "1",
                "--connections",
                connections,
                "--rate",
                "5000",
            ]))],
        });
    }
    list
}

/// The loopback HTTP/2 floor: one closed-loop caller of EmptyCall on our stack.
fn floor_scenario() -> Scenario {
    Scenario {
        name: "floor-empty-unary",
        what: "loopback HTTP/2 floor: EmptyCall on shardlog-wire, 1 caller closed loop",
        peer: false,
        prezero_off: false,
        grpc_testing: true,
        storage: &[],
        warmup_s_min: 0.0,
        steps: vec![Step::Fixed(args(&[
            "--shape",
            "empty",
            "--closed-loop",
            "1",
        ]))],
    }
}

/// The result of one step of one run.
#[derive(Debug, Clone)]
struct StepResult {
    label: String,
    /// The main run report (the sweep's best for sweeps).
    run: Option<Value>,
    /// Every run line (the sweep's points).
    points: Vec<Value>,
    /// The server's resident memory over the step.
    rss: RssSummary,
}

/// Server RSS over one step, sampled every [`RSS_SAMPLE_INTERVAL`].
#[derive(Debug, Clone, Default)]
struct RssSummary {
    /// At most [`RSS_SERIES_POINTS`] evenly spaced samples: (seconds into the step, KiB).
    series: Vec<(f64, u64)>,
    /// RSS when the warm-up ended (first sample at or after it).
    after_warmup_kib: u64,
    /// Largest sample.
    max_kib: u64,
    /// Last sample.
    end_kib: u64,
}

/// Spacing of RSS samples.
const RSS_SAMPLE_INTERVAL: Duration = Duration::from_millis(100);
/// Samples kept in a step's RSS series (the overload table shows them).
const RSS_SERIES_POINTS: usize = 11;

/// Resident set size of `pid` in KiB (0 if unreadable).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse().ok())
        })
        .unwrap_or(0)
}

/// Samples the RSS of `pid` on a thread until the returned guard is finished.
struct RssSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(Duration, u64)>>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut samples = Vec::new();
            while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                samples.push((started.elapsed(), rss_kib(pid)));
                std::thread::sleep(RSS_SAMPLE_INTERVAL);
            }
            samples
        });
        RssSampler { stop, thread }
    }

    fn finish(self, warmup: Duration) -> RssSummary {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let samples = self.thread.join().unwrap_or_default();
        // Evenly spaced indices from the first sample to the last.
        let last = samples.len().saturating_sub(1);
        let mut picks: Vec<usize> = (0..RSS_SERIES_POINTS)
            .map(|i| i * last / (RSS_SERIES_POINTS - 1))
            .collect();
        picks.dedup();
        let series = picks
            .iter()
            .filter_map(|&i| samples.get(i))
            .map(|(t, kib)| (t.as_secs_f64(), *kib))
            .collect();
        RssSummary {
            series,
            after_warmup_kib: samples
                .iter()
                .find(|(t, _)| *t >= warmup)
                .map_or(0, |s| s.1),
            max_kib: samples.iter().map(|s| s.1).max().unwrap_or(0),
            end_kib: samples.last().map_or(0, |s| s.1),
        }
    }
}

struct Suite {
    args: Args,
    bin_dir: PathBuf,
    peer_available: bool,
}

fn main() {
    let mut args = Args::parse();
    if args.smoke {
        args.runs = 1;
        args.duration_s = args.duration_s.min(0.3);
        args.warmup_s = args.warmup_s.min(0.1);
    }
    args.runs = args.runs.clamp(1, RUNS_MAX);
    let bin_dir = args.bin_dir.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("."))
    });
    let peer_available = bin_dir.join("peer-tonic").exists();
    let suite = Suite {
        args,
        bin_dir,
        peer_available,
    };
    if let Err(error) = suite.run() {
        eprintln!("bench-suite: {error}");
        std::process::exit(1);
    }
}

impl Suite {
    fn run(&self) -> Result<(), String> {
        let started = Instant::now();
        std::fs::create_dir_all(&self.args.data_dir).map_err(|e| format!("data dir: {e}"))?;
        if !self.peer_available {
            eprintln!(
                "bench-suite: no peer-tonic next to this binary: shardlog only (build with --features peer-tonic)"
            );
        }
        let disk = self.disk_limit()?;
        let mut all = scenarios(self.args.smoke);
        all.insert(0, floor_scenario());
        if let Some(only) = &self.args.only {
            all.retain(|s| s.name.contains(only.as_str()));
        }
        let mut results: Vec<(Scenario, ByServer)> = Vec::new();
        for scenario in all {
            let mut by_server: BTreeMap<Server, Vec<Vec<StepResult>>> = BTreeMap::new();
            let scenario_dir = self.args.data_dir.join(scenario.name);
            for run in 0..self.args.runs {
                for server in self.servers(&scenario) {
                    eprintln!("== {} / {} / run {}", scenario.name, server.name(), run + 1);
                    let data_dir = scenario_dir.join(format!("{server:?}-{run}"));
                    let steps = self.run_scenario(&scenario, server, &data_dir)?;
                    by_server.entry(server).or_default().push(steps);
                }
            }
            self.delete_and_settle(&scenario_dir);
            results.push((scenario, by_server));
        }
        let markdown = render(&self.args, &disk, &results, started.elapsed());
        println!("{markdown}");
        if self.args.smoke {
            smoke_verdict(&results)?;
        }
        if let Some(out) = &self.args.out {
            write_section(out, &markdown)?;
            let plots = self
                .args
                .plots
                .clone()
                .unwrap_or_else(|| out.parent().unwrap_or(Path::new(".")).join("plots"));
            plot_all(&plots, &results)?;
            eprintln!("wrote {} and plots in {}", out.display(), plots.display());
        }
        Ok(())
    }

    fn servers(&self, scenario: &Scenario) -> Vec<Server> {
        let mut servers = vec![Server::Shardlog];
        if scenario.prezero_off {
            servers.push(Server::ShardlogPrezeroOff);
        }
        if scenario.peer && self.peer_available {
            servers.push(Server::Peer);
        }
        servers
    }

    fn disk_limit(&self) -> Result<Value, String> {
        let (seq_mib, sync_ops) = if self.args.smoke {
            ("32", "200")
        } else {
            ("512", "2000")
        };
        let output = Command::new(self.bin_dir.join("disk-limit"))
            .args([
                "--dir",
                &self.args.data_dir.display().to_string(),
                "--seq-mib",
                seq_mib,
            ])
            .args(["--sync-ops", sync_ops])
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("disk-limit: {e}"))?;
        json_lines(&String::from_utf8_lossy(&output.stdout))
            .into_iter()
            .find_map(|v| v.get("disk").cloned())
            .ok_or_else(|| "disk-limit printed no result".to_owned())
    }

    /// Runs `scenario` against a fresh `server` in `data_dir`, which is left in place: the
    /// scenario's runs keep their data until all of them are done (see `delete_and_settle`).
    fn run_scenario(
        &self,
        scenario: &Scenario,
        server: Server,
        data_dir: &Path,
    ) -> Result<Vec<StepResult>, String> {
        let _ = std::fs::remove_dir_all(data_dir);
        std::fs::create_dir_all(data_dir).map_err(|e| format!("{}: {e}", data_dir.display()))?;
        let port = free_port()?;
        let mut child = self.start_server(server, port, data_dir, scenario)?;
        let outcome =
            wait_listening(port).and_then(|()| self.run_steps(scenario, port, child.id()));
        stop(&mut child);
        outcome
    }

    /// Deletes a finished scenario's data, then waits `--settle-s-per-gib` for each GiB
    /// deleted. Deleting gigabytes on a file system mounted with online discard keeps the
    /// device busy for seconds after `unlink` returns, invisibly to `/proc/diskstats`, and
    /// fdatasyncs issued meanwhile stall (measured: p99 from 2 ms to 300 ms at 100
    /// batches/s, for either server). Deleting between runs made every run pay for the one
    /// before it, and unequally: the suite interleaves servers.
    fn delete_and_settle(&self, scenario_dir: &Path) {
        let deleted_bytes = dir_bytes(scenario_dir);
        let _ = std::fs::remove_dir_all(scenario_dir);
        let gib = deleted_bytes as f64 / f64::from(1u32 << 30);
        let settle = Duration::from_secs_f64(gib * self.args.settle_s_per_gib).min(SETTLE_MAX);
        if settle >= Duration::from_millis(100) {
            eprintln!(
                "bench-suite: deleted {gib:.1} GiB; waiting {:.1} s for the device to settle",
                settle.as_secs_f64()
            );
            std::thread::sleep(settle);
        }
    }

    fn run_steps(
        &self,
        scenario: &Scenario,
        port: u16,
        pid: u32,
    ) -> Result<Vec<StepResult>, String> {
        let mut results = Vec::new();
        let mut best_rate = 0.0;
        for (index, step) in scenario.steps.iter().enumerate() {
            let topic = format!("{}-{index}", scenario.name);
            let mut load_args = vec![
                "--target".to_owned(),
                format!("127.0.0.1:{port}"),
                "--topic".to_owned(),
                topic,
                "--cpu".to_owned(),
                self.args.client_cpu.to_string(),
                "--quiet".to_owned(),
                "--duration-s".to_owned(),
                self.args.duration_s.to_string(),
                "--warmup-s".to_owned(),
                self.args.warmup_s.max(scenario.warmup_s_min).to_string(),
            ];
            let label = match step {
                Step::Fixed(extra) => {
                    load_args.extend(extra.iter().cloned());
                    "fixed".to_owned()
                }
                Step::Overload(extra) => {
                    load_args.extend(extra.iter().cloned());
                    load_args.extend(["--rate".to_owned(), self.args.overload_rate.to_string()]);
                    let seconds = self.args.overload_s.unwrap_or(self.args.duration_s * 10.0);
                    if let Some(at) = load_args.iter().position(|a| a == "--duration-s") {
                        load_args[at + 1] = seconds.to_string();
                    }
                    "overload".to_owned()
                }
                Step::Sweep(extra, bound_ms) => {
                    load_args.extend(extra.iter().cloned());
                    load_args.extend(["--sweep-p99-ms".to_owned(), bound_ms.to_string()]);
                    if self.args.smoke {
                        // One bisection step: the smoke only checks the machinery.
                        if let Some(at) = load_args.iter().position(|a| a == "--sweep-steps") {
                            load_args[at + 1] = "1".to_owned();
                        }
                    }
                    format!("sweep p99 <= {bound_ms} ms")
                }
                Step::AtFraction(extra, fraction, label) => {
                    if best_rate <= 0.0 {
                        continue;
                    }
                    load_args.extend(extra.iter().cloned());
                    load_args.extend(["--rate".to_owned(), format!("{:.1}", best_rate * fraction)]);
                    (*label).to_owned()
                }
            };
            let sampler = RssSampler::start(pid);
            let lines = self.load(&load_args);
            let rss = sampler.finish(Duration::from_secs_f64(self.args.warmup_s + 0.5));
            let lines = lines?;
            let points: Vec<Value> = lines.iter().filter_map(|v| v.get("run").cloned()).collect();
            let sweep = lines.iter().find_map(|v| v.get("sweep").cloned());
            let run = match &sweep {
                Some(sweep) => {
                    best_rate = sweep["best_rate"].as_f64().unwrap_or(0.0);
                    sweep.get("best").filter(|b| !b.is_null()).cloned()
                }
                None => points.last().cloned(),
            };
            results.push(StepResult {
                label,
                run,
                points,
                rss,
            });
        }
        Ok(results)
    }

    fn load(&self, load_args: &[String]) -> Result<Vec<Value>, String> {
        let output = Command::new(self.bin_dir.join("shardlog-load"))
            .args(load_args)
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("shardlog-load: {e}"))?;
        let lines = json_lines(&String::from_utf8_lossy(&output.stdout));
        if lines.is_empty() {
            return Err(format!(
                "shardlog-load {} printed nothing ({})",
                load_args.join(" "),
                output.status
            ));
        }
        Ok(lines)
    }

    fn start_server(
        &self,
        server: Server,
        port: u16,
        data_dir: &Path,
        scenario: &Scenario,
    ) -> Result<Child, String> {
        let cpu = self.args.server_cpu.to_string();
        let mut command = Command::new("taskset");
        command.args(["-c", &cpu]);
        match server {
            Server::Shardlog | Server::ShardlogPrezeroOff => {
                command
                    .arg(self.bin_dir.join("shardlog"))
                    .args([
                        "--listen",
                        &format!("127.0.0.1:{port}"),
                        "--shards",
                        "1",
                        "--no-pin",
                    ])
                    .args(["--metrics-listen", "off", "--data-dir"])
                    .arg(data_dir);
                if scenario.grpc_testing {
                    command.arg("--grpc-testing");
                }
                let mut storage = scenario.storage.to_vec();
                if server == Server::ShardlogPrezeroOff {
                    storage.push("prezero_segments = false");
                }
                if !storage.is_empty() {
                    let config = data_dir.join("shardlog.toml");
                    let text = format!("[storage]\n{}\n", storage.join("\n"));
                    std::fs::write(&config, text)
                        .map_err(|e| format!("{}: {e}", config.display()))?;
                    command.arg("--config").arg(config);
                }
            }
            Server::Peer => {
                command
                    .arg(self.bin_dir.join("peer-tonic"))
                    .args(["--port", &port.to_string(), "--data-dir"])
                    .arg(data_dir);
            }
        }
        command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("start {}: {e}", server.name()))
    }
}

/// The smoke fails when any run's verification found a problem (a wrong count, offset or
/// record): latency and errors vary with the machine, correctness must not.
fn smoke_verdict(results: &Results) -> Result<(), String> {
    let mut problems = Vec::new();
    for (scenario, by_server) in results {
        for (server, runs) in by_server {
            let reports = runs.iter().flatten().flat_map(|step| &step.points);
            for report in reports {
                let listed = report["verification"]["problems"]
                    .as_array()
                    .filter(|p| !p.is_empty());
                if let Some(listed) = listed {
                    problems.push(format!("{} / {}: {listed:?}", scenario.name, server.name()));
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("verification failed: {}", problems.join("; ")))
    }
}

fn json_lines(text: &str) -> Vec<Value> {
    BufReader::new(text.as_bytes())
        .lines()
        .map_while(Result::ok)
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str(&l).ok())
        .collect()
}

/// Bytes allocated to the files under `dir`, recursively (0 for what cannot be read): what
/// deleting them gives back to the device.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => dir_bytes(&entry.path()),
            Ok(_) => entry
                .metadata()
                .map_or(0, |m| std::os::unix::fs::MetadataExt::blocks(&m) * 512),
            Err(_) => 0,
        })
        .sum()
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("free port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("free port: {e}"))
}

fn wait_listening(port: u16) -> Result<(), String> {
    let deadline = Instant::now() + SERVER_START_TIMEOUT;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("server on port {port} did not start"))
}

/// SIGTERM (graceful drain), then SIGKILL after [`SERVER_STOP_TIMEOUT`].
fn stop(child: &mut Child) {
    // taskset execs the server, so the child's pid is the server's.
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + SERVER_STOP_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    Some(values[values.len() / 2])
}

/// The p-th latency percentile (µs) of a run report.
fn percentile_us(run: &Value, percentile: f64) -> Option<f64> {
    run["latency"]["points_us"]
        .as_array()?
        .iter()
        .find_map(|point| {
            let p = point[0].as_f64()?;
            ((p - percentile).abs() < 1e-9)
                .then(|| point[1].as_f64())
                .flatten()
        })
}

/// Medians over runs of one step of one server.
#[derive(Debug, Clone, Copy, Default)]
struct Medians {
    records_per_s: f64,
    requests_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    clean_runs: usize,
    runs: usize,
}

fn medians(runs: &[Vec<StepResult>], step: usize) -> Option<Medians> {
    let reports: Vec<&Value> = runs
        .iter()
        .filter_map(|r| r.get(step)?.run.as_ref())
        .collect();
    if reports.is_empty() {
        return None;
    }
    let field =
        |f: &dyn Fn(&Value) -> Option<f64>| median(reports.iter().filter_map(|r| f(r)).collect());
    let clean = |r: &&&Value| {
        r["errors"].as_object().is_some_and(|e| e.is_empty())
            && r["verification"]["problems"]
                .as_array()
                .is_some_and(|p| p.is_empty())
    };
    Some(Medians {
        records_per_s: field(&|r| r["records_per_s"].as_f64())?,
        requests_per_s: field(&|r| r["achieved_rate"].as_f64())?,
        p50_us: field(&|r| percentile_us(r, 50.0))?,
        p99_us: field(&|r| percentile_us(r, 99.0))?,
        p999_us: field(&|r| percentile_us(r, 99.9))?,
        clean_runs: reports.iter().filter(clean).count(),
        runs: reports.len(),
    })
}

fn ratio(ours: f64, theirs: f64) -> String {
    if theirs > 0.0 {
        format!("{:.2}", ours / theirs)
    } else {
        "-".to_owned()
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "{cpu}, {cores} CPUs, kernel {}, load average at the end {load}",
        kernel.trim()
    )
}

fn commit() -> String {
    let run = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let hash = run(&["rev-parse", "--short", "HEAD"]);
    let dirty = if run(&["status", "--porcelain", "--untracked-files=no"]).is_empty() {
        ""
    } else {
        " (with uncommitted changes)"
    };
    format!("{hash}{dirty}")
}

/// Per server, per run, the results of each step.
type ByServer = BTreeMap<Server, Vec<Vec<StepResult>>>;
/// Every scenario with its results.
type Results = [(Scenario, ByServer)];
/// One plotted line: server, label, points.
type Series = (Server, String, Vec<(f64, f64)>);

fn render(args: &Args, disk: &Value, results: &Results, elapsed: Duration) -> String {
    let mut out = String::from("## Suite\n\n");
    out += &format!(
        "Generated by `bench-suite{}` (runs {}, {} s measured + {} s warm-up per load run) in {:.0} s. \
         Machine: {}. Commit: {}. Server pinned to CPU {} (`taskset`, shardlog `--shards 1`), \
         generator `shardlog-load` pinned to CPU {}; servers started fresh per run and interleaved \
         (shardlog, peer, shardlog, ...). Latency is measured from each request's scheduled send \
         time (open loop) or from its send (closed loop); medians over runs. The peer is \
         `peer-tonic` (tonic 0.14 + tokio current_thread, per-partition files, group-committed \
         fdatasync before ack). Ratios are shardlog / peer: above 1 is better for throughput, \
         below 1 is better for latency.\n\n",
        if args.smoke { " --smoke" } else { "" },
        args.runs,
        args.duration_s,
        args.warmup_s,
        elapsed.as_secs_f64(),
        machine(),
        commit(),
        args.server_cpu,
        args.client_cpu
    );
    out += &format!(
        "Disk limit (`disk-limit`, raw io_uring, O_DIRECT, in the data dir): sequential write \
         {:.0} MB/s; 4 KiB write + fdatasync p50 {} us, p99 {} us, p99.9 {} us.\n\n",
        disk["seq_write_mb_per_s"].as_f64().unwrap_or(0.0),
        disk["sync_p50_us"],
        disk["sync_p99_us"],
        disk["sync_p999_us"]
    );
    out += "| scenario | step | server | records/s | req/s | p50 us | p99 us | p99.9 us | clean runs | ratio rec/s | ratio p99 |\n";
    out += "|---|---|---|---|---|---|---|---|---|---|---|\n";
    for (scenario, by_server) in results {
        for (index, step) in scenario.steps.iter().enumerate() {
            let ours = by_server
                .get(&Server::Shardlog)
                .and_then(|r| medians(r, index));
            let theirs = by_server.get(&Server::Peer).and_then(|r| medians(r, index));
            let off = by_server
                .get(&Server::ShardlogPrezeroOff)
                .and_then(|r| medians(r, index));
            let label = step_label(step);
            let rows = [
                (Server::Shardlog, ours),
                (Server::ShardlogPrezeroOff, off),
                (Server::Peer, theirs),
            ];
            for (server, m) in rows {
                let Some(m) = m else {
                    if by_server.contains_key(&server) {
                        out += &format!(
                            "| {} | {label} | {} | none sustained (see the runs' JSON) | | | | | | | |\n",
                            scenario.name,
                            server.name()
                        );
                    }
                    continue;
                };
                let (ratio_records, ratio_p99) = match (server, ours, theirs) {
                    // A sweep's p99s are taken at different rates: no latency ratio.
                    (Server::Shardlog, Some(o), Some(t)) if matches!(step, Step::Sweep(..)) => {
                        (ratio(o.records_per_s, t.records_per_s), "-".to_owned())
                    }
                    (Server::Shardlog, Some(o), Some(t)) => (
                        ratio(o.records_per_s, t.records_per_s),
                        ratio(o.p99_us, t.p99_us),
                    ),
                    _ => (String::new(), String::new()),
                };
                out += &format!(
                    "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {}/{} | {} | {} |\n",
                    scenario.name,
                    label,
                    server.name(),
                    m.records_per_s,
                    m.requests_per_s,
                    m.p50_us,
                    m.p99_us,
                    m.p999_us,
                    m.clean_runs,
                    m.runs,
                    ratio_records,
                    ratio_p99
                );
            }
        }
    }
    out += &render_memory(results);
    out += "\nScenarios:\n\n";
    for (scenario, _) in results {
        out += &format!("- `{}`: {}.\n", scenario.name, scenario.what);
    }
    out += "\nPlots: `docs/plots/suite-*-throughput-p99.svg` (every sweep point of every run), \
            `docs/plots/suite-*-percentiles.svg` (latency percentiles of the first run).\n";
    out
}

/// Server RSS table: per scenario step and server, the first run's samples
/// and the errors of its overload runs.
fn render_memory(results: &Results) -> String {
    let mut out = String::from(
        "\nServer memory (RSS sampled every 100 ms during each load; first run; MiB):\n\n\
         | scenario | server | after warm-up | max | end | errors (run's measured window) |\n\
         |---|---|---|---|---|---|\n",
    );
    let mib = |kib: u64| kib as f64 / 1024.0;
    for (scenario, by_server) in results {
        for (server, runs) in by_server {
            let Some(first) = runs.first() else { continue };
            for step in first {
                let errors = step
                    .run
                    .as_ref()
                    .or(step.points.last())
                    .map_or(String::new(), |r| r["errors"].to_string());
                out += &format!(
                    "| {} ({}) | {} | {:.1} | {:.1} | {:.1} | {} |\n",
                    scenario.name,
                    step.label,
                    server.name(),
                    mib(step.rss.after_warmup_kib),
                    mib(step.rss.max_kib),
                    mib(step.rss.end_kib),
                    errors
                );
                if step.label == "overload" {
                    let series: Vec<String> = step
                        .rss
                        .series
                        .iter()
                        .map(|(t, kib)| format!("{t:.0} s: {:.1}", mib(*kib)))
                        .collect();
                    out += &format!(
                        "| ↳ RSS series ({}) | {} | {} | | | |\n",
                        scenario.name,
                        server.name(),
                        series.join(", ")
                    );
                }
            }
        }
    }
    out
}

fn step_label(step: &Step) -> String {
    match step {
        Step::Fixed(_) => "fixed".to_owned(),
        Step::Overload(_) => "overload".to_owned(),
        Step::Sweep(_, bound) => format!("max with p99 <= {bound} ms"),
        Step::AtFraction(_, _, label) => (*label).to_owned(),
    }
}

/// Marks the start of the generated part of `## Suite`.
const GENERATED_BEGIN: &str = "<!-- bench-suite: generated, begin -->";
/// Marks the end of the generated part of `## Suite`.
const GENERATED_END: &str = "<!-- bench-suite: generated, end -->";

/// Writes `section` (starting with its `## Suite` heading) into `path`:
/// between the generated-part markers if they exist (hand-written text
/// around them stays), else as a new section at the end.
fn write_section(path: &Path, section: &str) -> Result<(), String> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let body = section.strip_prefix("## Suite\n\n").unwrap_or(section);
    let generated = format!("{GENERATED_BEGIN}\n\n{}\n{GENERATED_END}", body.trim_end());
    let updated = match (text.find(GENERATED_BEGIN), text.find(GENERATED_END)) {
        (Some(begin), Some(end)) if begin < end => format!(
            "{}{generated}{}",
            &text[..begin],
            &text[end + GENERATED_END.len()..]
        ),
        _ => format!("{}\n\n## Suite\n\n{generated}\n", text.trim_end()),
    };
    std::fs::write(path, updated).map_err(|e| format!("write {}: {e}", path.display()))
}

fn plot_all(dir: &Path, results: &Results) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for (scenario, by_server) in results {
        let has_sweep = scenario.steps.iter().any(|s| matches!(s, Step::Sweep(..)));
        if has_sweep {
            let path = dir.join(format!("suite-{}-throughput-p99.svg", scenario.name));
            plot_curve(&path, scenario.name, by_server)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        let path = dir.join(format!("suite-{}-percentiles.svg", scenario.name));
        plot_percentiles(&path, scenario.name, by_server)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

fn server_color(server: Server) -> RGBColor {
    match server {
        Server::Shardlog => RGBColor(0x1f, 0x77, 0xb4),
        Server::ShardlogPrezeroOff => RGBColor(0x2c, 0xa0, 0x2c),
        Server::Peer => RGBColor(0xd6, 0x27, 0x28),
    }
}

/// Throughput (records/s) vs p99 latency of every sweep point.
fn plot_curve(
    path: &Path,
    name: &str,
    by_server: &BTreeMap<Server, Vec<Vec<StepResult>>>,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut series: Vec<(Server, Vec<(f64, f64)>)> = Vec::new();
    for (server, runs) in by_server {
        let mut points: Vec<(f64, f64)> = runs
            .iter()
            .flat_map(|steps| steps.iter().filter(|s| s.label.starts_with("sweep")))
            .flat_map(|s| s.points.iter())
            .filter_map(|r| {
                Some((
                    r["records_per_s"].as_f64()?,
                    percentile_us(r, 99.0)? / 1000.0,
                ))
            })
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        series.push((*server, points));
    }
    let x_max = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|x| x.0))
        .fold(1.0, f64::max)
        * 1.1;
    let y_max = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|x| x.1))
        .fold(0.1, f64::max)
        * 1.2;
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{name}: throughput vs p99 latency"),
            ("sans-serif", 20),
        )
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, (0.01..y_max).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("acknowledged records/s")
        .y_desc("p99 latency (ms, log)")
        .draw()?;
    for (server, points) in series {
        let color = server_color(server);
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(server.name())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 3, color.filled())),
        )?;
    }
    chart.configure_series_labels().border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}

/// Latency percentiles of each step of the first run, one line per server and step.
fn plot_percentiles(
    path: &Path,
    name: &str,
    by_server: &BTreeMap<Server, Vec<Vec<StepResult>>>,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut series: Vec<Series> = Vec::new();
    for (server, runs) in by_server {
        let Some(first) = runs.first() else { continue };
        for step in first {
            let Some(run) = &step.run else { continue };
            let points: Vec<(f64, f64)> = PLOTTED_PERCENTILES
                .iter()
                .enumerate()
                .filter_map(|(i, p)| Some((i as f64, percentile_us(run, *p)? / 1000.0)))
                .collect();
            series.push((*server, step.label.clone(), points));
        }
    }
    let y_max = series
        .iter()
        .flat_map(|(_, _, p)| p.iter().map(|x| x.1))
        .fold(0.1, f64::max)
        * 1.2;
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{name}: latency percentiles"), ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(
            0.0..(PLOTTED_PERCENTILES.len() - 1) as f64,
            (0.01..y_max).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_labels(PLOTTED_PERCENTILES.len())
        .x_label_formatter(&|x| {
            let index = x.round() as usize;
            PLOTTED_PERCENTILES
                .get(index)
                .map_or(String::new(), |p| format!("p{p}"))
        })
        .x_desc("percentile")
        .y_desc("latency (ms, log)")
        .draw()?;
    for (index, (server, label, points)) in series.into_iter().enumerate() {
        let color = server_color(server);
        let style = if index % 2 == 0 {
            color.stroke_width(2)
        } else {
            color.stroke_width(1)
        };
        chart
            .draw_series(LineSeries::new(points, style))?
            .label(format!("{} ({label})", server.name()))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart.configure_series_labels().border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}
