//! Tail latency of the cross-core hop: `channel_mesh` vs `flume`, the two
//! executors pinned to CPUs 0 and 1, runs interleaved so machine noise hits
//! both alike. Prints p50/p99/p999 per transport and run.

use glommio::Placement;
use shardlog_benches::crosscore::{Transport, round_trips};

const ROUNDS: u64 = 100_000;
const RUNS: usize = 3;

fn main() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let placements = if cpus >= 2 {
        [Placement::Fixed(0), Placement::Fixed(1)]
    } else {
        [Placement::Unbound, Placement::Unbound]
    };
    // The first timer and first wake-ups of a glommio process are slow.
    let _ = round_trips(Transport::Mesh, 1_000, placements.clone());
    println!("transport      run  p50_us  p99_us  p999_us  mean_us");
    for run in 1..=RUNS {
        for (name, transport) in [
            ("channel_mesh", Transport::Mesh),
            ("flume", Transport::Flume),
        ] {
            let (latencies, total) = round_trips(transport, ROUNDS, placements.clone());
            let us = |q: f64| latencies.value_at_quantile(q) as f64 / 1000.0;
            println!(
                "{name:<14} {run:>3}  {:>6.1}  {:>6.1}  {:>7.1}  {:>7.2}",
                us(0.5),
                us(0.99),
                us(0.999),
                total.as_secs_f64() * 1e6 / ROUNDS as f64
            );
        }
    }
}
