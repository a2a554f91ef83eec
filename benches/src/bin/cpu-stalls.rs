//! `cpu-stalls`: how long each CPU is taken away from a thread that should run at once, while a
//! benchmark runs beside it. On a VM that is the hypervisor descheduling the vCPU (steal, CPU
//! quotas); on bare metal, interrupt storms. A benchmark's tail is only the server's own when
//! this stays quiet during the run.
//!
//! One thread per CPU, pinned, real-time (SCHED_FIFO, so no task of the benchmark can delay
//! it; falls back to the normal class without the privilege, and says so), sleeps
//! `--sleep-us` in a loop. A wake-up more than `--threshold-us` late counts as a stall.
//!
//! `cpu-stalls --duration-s 5 --list` prints every stall with its time, then per CPU the
//! count, the stalled ms per second and the longest.

use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;

/// Most stalls kept per CPU (the count and total stay exact beyond it).
const STALLS_KEPT_MAX: usize = 10_000;
/// Shortest sleep of a probe step.
const SLEEP_US_MIN: u64 = 100;
/// Real-time priority of the probes: above every normal task, below the kernel's own.
const PROBE_PRIORITY: i32 = 50;

#[derive(Debug, Parser)]
#[command(about = "Measures how long each CPU is taken away from a real-time probe thread")]
struct Args {
    /// How long to probe.
    #[arg(long, default_value_t = 5.0)]
    duration_s: f64,
    /// CPUs to probe (comma-separated; all online CPUs when absent).
    #[arg(long, value_delimiter = ',')]
    cpus: Vec<usize>,
    /// Sleep of one probe step.
    #[arg(long, default_value_t = 500)]
    sleep_us: u64,
    /// A wake-up this much later than asked counts as a stall.
    #[arg(long, default_value_t = 3000)]
    threshold_us: u64,
    /// Print every stall (time since the start, length).
    #[arg(long)]
    list: bool,
}

/// What one CPU's probe saw.
struct Probe {
    cpu: usize,
    realtime: bool,
    /// (start since the probe began, stall length).
    stalls: Vec<(Duration, Duration)>,
    count: u64,
    total: Duration,
    longest: Duration,
}

fn main() {
    let args = Args::parse();
    // A real-time thread that never sleeps would starve its CPU: the sleep has a floor.
    let checks = [
        (
            args.duration_s > 0.0 && args.duration_s <= 3600.0,
            "--duration-s out of (0, 3600]",
        ),
        (
            (SLEEP_US_MIN..=1_000_000).contains(&args.sleep_us),
            "--sleep-us out of 100..=1000000",
        ),
        (args.threshold_us >= 1, "--threshold-us must be >= 1"),
    ];
    if let Some((_, message)) = checks.iter().find(|(ok, _)| !ok) {
        eprintln!("cpu-stalls: {message}");
        std::process::exit(2);
    }
    let cpus = if args.cpus.is_empty() {
        (0..thread::available_parallelism().map_or(1, |n| n.get())).collect()
    } else {
        args.cpus.clone()
    };
    let duration = Duration::from_secs_f64(args.duration_s);
    let sleep = Duration::from_micros(args.sleep_us);
    let threshold = Duration::from_micros(args.threshold_us);
    let probes: Vec<_> = cpus
        .into_iter()
        .map(|cpu| thread::spawn(move || probe(cpu, duration, sleep, threshold)))
        .collect();
    for handle in probes {
        let probe = match handle.join() {
            Ok(Ok(probe)) => probe,
            Ok(Err(error)) => {
                eprintln!("cpu-stalls: {error}");
                std::process::exit(2);
            }
            Err(_) => std::process::exit(2),
        };
        report(&probe, duration, args.list);
    }
}

fn probe(
    cpu: usize,
    duration: Duration,
    sleep: Duration,
    threshold: Duration,
) -> Result<Probe, String> {
    pin_to(cpu)?;
    let realtime = make_realtime();
    let mut probe = Probe {
        cpu,
        realtime,
        stalls: Vec::new(),
        count: 0,
        total: Duration::ZERO,
        longest: Duration::ZERO,
    };
    let start = Instant::now();
    let mut before = start;
    while before - start < duration {
        thread::sleep(sleep);
        let after = Instant::now();
        let late = (after - before).saturating_sub(sleep);
        if late > threshold {
            probe.count += 1;
            probe.total += late;
            probe.longest = probe.longest.max(late);
            if probe.stalls.len() < STALLS_KEPT_MAX {
                probe.stalls.push((before - start, late));
            }
        }
        before = after;
    }
    Ok(probe)
}

fn pin_to(cpu: usize) -> Result<(), String> {
    // SAFETY: cpu_set_t is plain data; CPU_SET stays within it (cpu is checked against its
    // size); sched_setaffinity(0, ..) affects only the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if cpu >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
            return Err(format!("cpu {cpu} is beyond the affinity mask"));
        }
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(format!(
                "pin to cpu {cpu}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// Moves the calling thread to SCHED_FIFO; false (with a warning) without the privilege.
fn make_realtime() -> bool {
    let param = libc::sched_param {
        sched_priority: PROBE_PRIORITY,
    };
    // SAFETY: param is a valid sched_param; pid 0 is the calling thread.
    let set = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    if set != 0 {
        eprintln!(
            "cpu-stalls: SCHED_FIFO refused ({}); probing in the normal class, where the \
             benchmark's own threads can delay the probe too",
            std::io::Error::last_os_error()
        );
    }
    set == 0
}

fn report(probe: &Probe, duration: Duration, list: bool) {
    if list {
        for (at, late) in &probe.stalls {
            println!(
                "cpu{} at {:9.1} ms: stalled {:6.1} ms",
                probe.cpu,
                at.as_secs_f64() * 1e3,
                late.as_secs_f64() * 1e3
            );
        }
    }
    println!(
        "cpu{}{}: {} stalls, {:.1} ms stalled per s, longest {:.1} ms",
        probe.cpu,
        if probe.realtime {
            ""
        } else {
            " (not real-time)"
        },
        probe.count,
        probe.total.as_secs_f64() * 1e3 / duration.as_secs_f64(),
        probe.longest.as_secs_f64() * 1e3
    );
}
