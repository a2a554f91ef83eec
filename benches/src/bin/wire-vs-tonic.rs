//! The wire benchmark driver: unary `EmptyCall` rate of shardlog-wire (one
//! glommio executor) against tonic 0.14 + tokio (one thread), both pinned to
//! CPU 0, loaded by `h2load` pinned to CPU 1, interleaved in one run.
//!
//! h2load counts HTTP status only, so before each load the driver checks
//! with `nghttp` (an independent client) that the server answers
//! `grpc-status: 0`. Prints every run, the medians and the ratio, with the
//! exact command lines, as Markdown.
//!
//! Usage (build both servers first, in release):
//! `cargo build --release -p shardlog-benches --features tonic-baseline --bins`
//! `target/release/wire-vs-tonic [--runs 3] [--duration-s 5] [--warmup-s 1]
//!  [--loads 4x32,50x20] [--server-cpu 0] [--client-cpu 1]`

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const EMPTY_CALL_PATH: &str = "/grpc.testing.TestService/EmptyCall";
/// How long a server may take to start listening.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(10);
/// Most runs per load and server.
const RUNS_MAX: usize = 15;

struct Args {
    runs: usize,
    duration_s: u32,
    warmup_s: u32,
    loads: Vec<(u32, u32)>,
    server_cpu: usize,
    client_cpu: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        runs: 3,
        duration_s: 5,
        warmup_s: 1,
        loads: vec![(4, 32), (50, 20)],
        server_cpu: 0,
        client_cpu: 1,
    };
    let mut iter = std::env::args().skip(1);
    while let Some(flag) = iter.next() {
        let value = iter.next().ok_or(format!("{flag} needs a value"))?;
        let number = |v: &str| v.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--runs" => args.runs = number(&value)?.clamp(1, RUNS_MAX),
            "--duration-s" => args.duration_s = number(&value)? as u32,
            "--warmup-s" => args.warmup_s = number(&value)? as u32,
            "--server-cpu" => args.server_cpu = number(&value)?,
            "--client-cpu" => args.client_cpu = number(&value)?,
            "--loads" => args.loads = parse_loads(&value)?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(args)
}

/// `"4x32,50x20"` -> connections x streams per connection.
fn parse_loads(value: &str) -> Result<Vec<(u32, u32)>, String> {
    value
        .split(',')
        .map(|load| {
            let (connections, streams) = load
                .split_once('x')
                .ok_or(format!("load {load:?} is not CONNECTIONSxSTREAMS"))?;
            Ok((
                connections.parse().map_err(|e| format!("{load}: {e}"))?,
                streams.parse().map_err(|e| format!("{load}: {e}"))?,
            ))
        })
        .collect()
}

/// One server under test.
struct Contender {
    name: &'static str,
    binary: PathBuf,
    extra_args: Vec<String>,
}

/// A started server, killed on drop.
struct Running {
    child: Child,
    port: u16,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}

fn start(contender: &Contender, cpu: usize) -> Result<Running, String> {
    let port = free_port()?;
    let child = Command::new("taskset")
        .args(["-c", &cpu.to_string()])
        .arg(&contender.binary)
        .args(["--port", &port.to_string()])
        .args(&contender.extra_args)
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("start {}: {e}", contender.binary.display()))?;
    let running = Running { child, port };
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + SERVER_START_TIMEOUT;
    while TcpStream::connect(address).is_err() {
        if Instant::now() > deadline {
            return Err(format!("{} did not listen on {port}", contender.name));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(running)
}

/// Checks with nghttp that EmptyCall answers grpc-status 0.
fn verify_grpc_status(port: u16, body: &Path) -> Result<(), String> {
    let url = format!("http://127.0.0.1:{port}{EMPTY_CALL_PATH}");
    let output = Command::new("nghttp")
        .args([
            "-v",
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
        ])
        .arg("-d")
        .arg(body)
        .arg(&url)
        .output()
        .map_err(|e| format!("nghttp: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    if text.contains("grpc-status: 0") {
        Ok(())
    } else {
        Err(format!("EmptyCall did not answer grpc-status 0:\n{text}"))
    }
}

fn h2load_args(port: u16, load: (u32, u32), args: &Args, body: &Path) -> Vec<String> {
    vec![
        "-c".into(),
        args.client_cpu.to_string(),
        "h2load".into(),
        "-t".into(),
        "1".into(),
        "-c".into(),
        load.0.to_string(),
        "-m".into(),
        load.1.to_string(),
        "-D".into(),
        args.duration_s.to_string(),
        "--warm-up-time".into(),
        args.warmup_s.to_string(),
        "-H".into(),
        "content-type: application/grpc".into(),
        "-H".into(),
        "te: trailers".into(),
        "-d".into(),
        body.display().to_string(),
        format!("http://127.0.0.1:{port}{EMPTY_CALL_PATH}"),
    ]
}

/// Runs h2load; returns req/s, failing if any request failed.
fn load(port: u16, load: (u32, u32), args: &Args, body: &Path) -> Result<f64, String> {
    let output = Command::new("taskset")
        .args(h2load_args(port, load, args, body))
        .output()
        .map_err(|e| format!("h2load: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let rate = text
        .lines()
        .find_map(|line| {
            let rest = line.strip_prefix("finished in ")?;
            let rate = rest.split(", ").nth(1)?.strip_suffix(" req/s")?;
            rate.parse::<f64>().ok()
        })
        .ok_or(format!("no rate in h2load output:\n{text}"))?;
    let failed = text
        .lines()
        .find(|line| line.starts_with("requests:"))
        .and_then(|line| line.split(", ").find(|part| part.ends_with(" failed")))
        .and_then(|part| part.trim_end_matches(" failed").trim().parse::<u64>().ok())
        .ok_or(format!("no request counts in h2load output:\n{text}"))?;
    if failed > 0 {
        return Err(format!("{failed} requests failed:\n{text}"));
    }
    Ok(rate)
}

/// `taskset ARGS`, quoting arguments that hold spaces.
fn shell_line(args: &[String]) -> String {
    let quoted: Vec<String> = args
        .iter()
        .map(|arg| {
            if arg.contains(' ') {
                format!("'{arg}'")
            } else {
                arg.clone()
            }
        })
        .collect();
    format!("taskset {}", quoted.join(" "))
}

/// The machine's load average (1, 5, 15 min), to judge the noise.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".into())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let bin_dir = std::env::current_exe()?
        .parent()
        .ok_or("executable has no directory")?
        .to_path_buf();
    let contenders = [
        Contender {
            name: "shardlog-wire (glommio, 1 executor)",
            binary: bin_dir.join("wire-empty-server"),
            extra_args: vec!["--cpu".into(), args.server_cpu.to_string()],
        },
        Contender {
            name: "tonic 0.14 (tokio current_thread)",
            binary: bin_dir.join("tonic-empty-server"),
            extra_args: Vec::new(),
        },
    ];
    let scratch = std::env::temp_dir().join(format!("wire-vs-tonic-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let body = scratch.join("empty-call.bin");
    // One gRPC message: not compressed, length 0 (an empty grpc.testing.Empty).
    std::fs::write(&body, [0u8; 5])?;

    let load_before = load_average();
    println!("| load (conns x streams) | server | runs (req/s) | median req/s |");
    println!("|---|---|---|---|");
    let mut example_command = String::new();
    for &load_shape in &args.loads {
        let mut medians = Vec::new();
        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); contenders.len()];
        for _run in 0..args.runs {
            // Interleaved so drift on the machine hits both alike.
            for (contender, rates) in contenders.iter().zip(rates.iter_mut()) {
                let server = start(contender, args.server_cpu)?;
                verify_grpc_status(server.port, &body)?;
                example_command = shell_line(&h2load_args(server.port, load_shape, &args, &body));
                rates.push(load(server.port, load_shape, &args, &body)?);
            }
        }
        let rates_in_order = rates.clone();
        for (contender, rates) in contenders.iter().zip(rates.iter_mut()) {
            let runs: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
            let middle = median(rates);
            medians.push(middle);
            println!(
                "| {}x{} | {} | {} | {:.0} |",
                load_shape.0,
                load_shape.1,
                contender.name,
                runs.join(", "),
                middle
            );
        }
        // Runs are paired (wire then tonic, back to back): the ratio within a
        // pair sees the same machine state, so its median is the robust figure.
        let mut paired: Vec<f64> = rates_in_order[0]
            .iter()
            .zip(&rates_in_order[1])
            .map(|(wire, tonic)| wire / tonic)
            .collect();
        let pairs: Vec<String> = paired.iter().map(|r| format!("{r:.2}")).collect();
        println!(
            "| {}x{} | **ratio wire / tonic** | per run pair: {} | medians: **{:.2}**, per-pair median: **{:.2}** |",
            load_shape.0,
            load_shape.1,
            pairs.join(", "),
            medians[0] / medians[1],
            median(&mut paired)
        );
    }
    println!("\nlast h2load command line: `{example_command}`");
    println!(
        "load average before / after: {load_before} / {}",
        load_average()
    );
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}
