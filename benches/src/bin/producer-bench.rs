//! Client producer benchmark: `shardlog-load --shape producer` with the client target's
//! presets (one `shardlog_wire::client::Producer`, single 100-byte records, batches of up to
//! 1000 records or 1 ms linger, one partition, durable acks). Open loop: records are handed to
//! the producer at `--rate` records/s and each one's send-to-ack latency is measured from its
//! scheduled time; acks are verified (offsets tile the partition; `--read-back` checks keys).
//! Any `shardlog-load` option overrides the presets; `--sweep-p99-ms 5` finds the highest rate
//! whose p99 stays within the target.
//!
//! Run against a server started separately, pinned apart:
//! ```text
//! taskset -c 0 target/release/shardlog --shards 1 --no-pin --listen 127.0.0.1:7411 \
//!     --data-dir /tmp/pb --metrics-listen off &
//! target/release/producer-bench --target 127.0.0.1:7411 --cpu 1 --rate 1000000
//! ```

use std::process::Command;

/// The client target's settings, placed before the caller's arguments (later ones win).
const PRESETS: [&str; 12] = [
    "--shape",
    "producer",
    "--topic",
    "producer-bench",
    "--record-bytes",
    "100",
    "--batch-records",
    "1000",
    "--linger-ms",
    "1",
    "--rate",
    "500000",
];

fn main() {
    let Some(load) = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("shardlog-load")))
        .filter(|path| path.exists())
    else {
        eprintln!("producer-bench: shardlog-load must be next to this binary (cargo build --bins)");
        std::process::exit(2)
    };
    let status = Command::new(load)
        .args(PRESETS)
        .args(std::env::args().skip(1))
        .status();
    match status {
        Ok(status) => std::process::exit(status.code().unwrap_or(1)),
        Err(error) => {
            eprintln!("producer-bench: run shardlog-load: {error}");
            std::process::exit(2)
        }
    }
}
