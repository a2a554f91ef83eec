//! What one load run does: target, call shape, rate, sizes, bounds. Parsed
//! by clap in `shardlog-load` and serialized into each run's JSON line.

use serde::Serialize;

use super::stats::TIMELINE_WINDOWS_MAX;

/// Most connections one generator opens.
pub const CONNECTIONS_MAX: u32 = 1024;
/// Most long-lived streams per connection (streaming shapes).
pub const STREAMS_PER_CONNECTION_MAX: u32 = 256;
/// Most records in one batch.
pub const BATCH_RECORDS_MAX: u32 = 100_000;
/// Largest record value.
pub const RECORD_BYTES_MAX: u32 = 1 << 20;
/// Most subscribers of the Subscribe shape.
pub const SUBSCRIBERS_MAX: u32 = 1024;
/// Most closed-loop producers.
pub const CLOSED_LOOP_PRODUCERS_MAX: u32 = 4096;

/// The RPC a run exercises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Shape {
    /// Unary `Produce`, one call per batch.
    Produce,
    /// `ProduceStream`: long-lived bidi streams, one response per batch.
    ProduceStream,
    /// Single records handed to the client library's batching, idempotent
    /// `Producer` (pipelined over ProduceStream); `--rate` is records/s,
    /// `--batch-records` and `--linger-ms` its batch limits.
    Producer,
    /// `Append`: client streaming, one summary at the end.
    Append,
    /// Unary `Fetch` of prefilled data at random offsets.
    Fetch,
    /// `Subscribe` fan-out: subscribers tail partitions while batches are produced.
    Subscribe,
    /// `grpc.testing.TestService/EmptyCall`: the loopback HTTP/2 floor of
    /// the wire stack (server started with `--grpc-testing`; no topic).
    Empty,
}

/// Inter-arrival times of the open-loop schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleKind {
    /// Evenly spaced arrivals.
    Constant,
    /// Exponential inter-arrival times (a Poisson process).
    Poisson,
}

/// How batches pick their partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyDistribution {
    /// Partitions in turn.
    RoundRobin,
    /// Uniformly random partition.
    Uniform,
    /// Zipf-distributed (exponent 1.1): a few hot partitions.
    Zipf,
}

/// Acknowledgement level requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AckMode {
    /// Ack after fdatasync (the default).
    Durable,
    /// Ack once in the write buffer.
    Written,
}

/// One load run.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct LoadConfig {
    /// Server address (host:port).
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub target: String,
    /// Topic to produce to (created if missing).
    #[arg(long, default_value = "load")]
    pub topic: String,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 1)]
    pub partitions: u32,
    /// Call shape.
    #[arg(long, value_enum, default_value = "produce")]
    pub shape: Shape,
    /// Open-loop rate in requests (batches) per second.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Arrival schedule.
    #[arg(long, value_enum, default_value = "constant")]
    pub schedule: ScheduleKind,
    /// Measured duration in seconds (after warm-up).
    #[arg(long, default_value_t = 5.0)]
    pub duration_s: f64,
    /// Warm-up in seconds: sent, not measured.
    #[arg(long, default_value_t = 1.0)]
    pub warmup_s: f64,
    /// TCP connections (one HTTP/2 connection each).
    #[arg(long, default_value_t = 1)]
    pub connections: u32,
    /// Long-lived streams per connection (ProduceStream, Append).
    #[arg(long, default_value_t = 1)]
    pub streams: u32,
    /// Records per batch.
    #[arg(long, default_value_t = 1)]
    pub batch_records: u32,
    /// Bytes of each record value.
    #[arg(long, default_value_t = 100)]
    pub record_bytes: u32,
    /// Producer shape: how long a partition's batch may wait for more records.
    #[arg(long, default_value_t = 5.0)]
    pub linger_ms: f64,
    /// Partition choice per batch.
    #[arg(long, value_enum, default_value = "round-robin")]
    pub keys: KeyDistribution,
    /// Ack level.
    #[arg(long, value_enum, default_value = "durable")]
    pub ack: AckMode,
    /// Closed loop with N producers instead of the open-loop schedule.
    #[arg(long, value_name = "N")]
    pub closed_loop: Option<u32>,
    /// Subscribers of the Subscribe shape (spread over partitions).
    #[arg(long, default_value_t = 16)]
    pub subscribers: u32,
    /// After the run, fetch everything produced and check every record.
    #[arg(long)]
    pub read_back: bool,
    /// Requests in flight before new ones count as overflowed (open-loop
    /// bound; a 256 MiB payload-in-flight bound also applies).
    #[arg(long, default_value_t = 20_000)]
    pub inflight_max: u32,
    /// Per-call deadline in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Seed of the schedule and key choice.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Also report latency per window of this many ms of due time (when the tail happened).
    #[arg(long, value_name = "MS")]
    pub timeline_ms: Option<f64>,
}

impl LoadConfig {
    /// Checks every bound; the error names the offending setting.
    pub fn validate(&self) -> Result<(), String> {
        let checks: [(bool, &str); 13] = [
            (self.partitions >= 1, "--partitions must be >= 1"),
            (
                self.rate > 0.0 && self.rate.is_finite(),
                "--rate must be > 0",
            ),
            (self.duration_s > 0.0, "--duration-s must be > 0"),
            (self.warmup_s >= 0.0, "--warmup-s must be >= 0"),
            (
                (1..=CONNECTIONS_MAX).contains(&self.connections),
                "--connections out of 1..=1024",
            ),
            (
                (1..=STREAMS_PER_CONNECTION_MAX).contains(&self.streams),
                "--streams out of 1..=256",
            ),
            (
                (1..=BATCH_RECORDS_MAX).contains(&self.batch_records),
                "--batch-records out of 1..=100000",
            ),
            (
                (12..=RECORD_BYTES_MAX).contains(&self.record_bytes),
                "--record-bytes out of 12..=1048576",
            ),
            (
                (1..=SUBSCRIBERS_MAX).contains(&self.subscribers),
                "--subscribers out of 1..=1024",
            ),
            (
                self.closed_loop
                    .is_none_or(|n| (1..=CLOSED_LOOP_PRODUCERS_MAX).contains(&n)),
                "--closed-loop out of 1..=4096",
            ),
            (
                (0.0..=60_000.0).contains(&self.linger_ms),
                "--linger-ms out of 0..=60000",
            ),
            (
                self.timeline_ms.is_none_or(|ms| {
                    ms >= 1.0 && self.duration_s * 1e3 / ms <= TIMELINE_WINDOWS_MAX as f64
                }),
                "--timeline-ms must be >= 1 and cut --duration-s into at most 1000 windows",
            ),
            (
                !(self.shape == Shape::Producer && self.closed_loop.is_some()),
                "--shape producer is open loop only (the producer's buffer is its window)",
            ),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, message)) => Err((*message).to_owned()),
            None => Ok(()),
        }
    }
}
