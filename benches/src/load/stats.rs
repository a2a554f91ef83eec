//! Latency and throughput recording of one run, and its report (the final
//! summary and the JSON line).

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::config::LoadConfig;

/// Largest latency a histogram holds (longer ones are clamped to it).
pub const LATENCY_US_MAX: u64 = 60_000_000;
/// Significant digits of the histograms.
const HISTOGRAM_DIGITS: u8 = 3;

/// Percentiles every report carries.
pub const REPORTED_PERCENTILES: [f64; 7] = [50.0, 90.0, 99.0, 99.9, 99.99, 99.999, 100.0];

/// Latencies and counts of the measured window.
#[derive(Debug)]
pub struct Recorder {
    /// From the scheduled send time to the reply.
    pub latency_us: Histogram<u64>,
    /// From the actual send to the reply.
    pub service_us: Histogram<u64>,
    /// Requests answered OK in the measured window.
    pub ok_requests: u64,
    /// Records acknowledged in the measured window.
    pub ok_records: u64,
    /// Failed requests by gRPC code name (measured window).
    pub errors: BTreeMap<String, u64>,
    /// Requests not sent because `inflight_max` was reached (open loop).
    pub overflowed: u64,
}

impl Default for Recorder {
    fn default() -> Recorder {
        Recorder::new()
    }
}

impl Recorder {
    /// An empty recorder.
    pub fn new() -> Recorder {
        let histogram = || {
            Histogram::new_with_bounds(1, LATENCY_US_MAX, HISTOGRAM_DIGITS)
                .expect("constant histogram bounds are valid")
        };
        Recorder {
            latency_us: histogram(),
            service_us: histogram(),
            ok_requests: 0,
            ok_records: 0,
            errors: BTreeMap::new(),
            overflowed: 0,
        }
    }

    /// One successful request of `records` records.
    pub fn ok(&mut self, latency: Duration, service: Duration, records: u64) {
        self.latency_us.saturating_record(micros(latency));
        self.service_us.saturating_record(micros(service));
        self.ok_requests += 1;
        self.ok_records += records;
    }

    /// One failed request.
    pub fn error(&mut self, code: &str) {
        *self.errors.entry(code.to_owned()).or_default() += 1;
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros())
        .unwrap_or(u64::MAX)
        .clamp(1, LATENCY_US_MAX)
}

/// Percentiles of one histogram, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    /// `(percentile, microseconds)` pairs, [`REPORTED_PERCENTILES`].
    pub points_us: Vec<(f64, u64)>,
    /// Mean in microseconds.
    pub mean_us: f64,
}

impl Percentiles {
    /// Percentiles of `histogram`.
    pub fn of(histogram: &Histogram<u64>) -> Percentiles {
        Percentiles {
            points_us: REPORTED_PERCENTILES
                .iter()
                .map(|&p| (p, histogram.value_at_percentile(p)))
                .collect(),
            mean_us: histogram.mean(),
        }
    }

    /// The value at `percentile` (one of [`REPORTED_PERCENTILES`]), 0 if absent.
    pub fn at(&self, percentile: f64) -> u64 {
        self.points_us
            .iter()
            .find(|(p, _)| (*p - percentile).abs() < 1e-9)
            .map_or(0, |(_, v)| *v)
    }
}

/// Outcome of the produced-data verification.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Verification {
    /// Acknowledged batches checked (whole run, warm-up included).
    pub acked_batches: u64,
    /// Acknowledged records.
    pub acked_records: u64,
    /// Partitions whose acked ranges were contiguous and matched the end offset.
    pub partitions_ok: u32,
    /// Records read back and checked (0 without `--read-back`).
    pub read_back_records: u64,
    /// Stored records no ack covers (allowed up to the records of failed requests, whose
    /// outcome the generator cannot know).
    pub unacked_stored_records: u64,
    /// Problems found; empty when everything checked out.
    pub problems: Vec<String>,
}

/// One run's result: the JSON line and the summary.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// What ran.
    pub config: LoadConfig,
    /// "open" or "closed".
    pub mode: &'static str,
    /// Offered rate in requests per second (open loop; 0 closed loop).
    pub target_rate: f64,
    /// Replies per second in the measured window.
    pub achieved_rate: f64,
    /// Records acknowledged per second in the measured window.
    pub records_per_s: f64,
    /// Record payload MB/s (values only) acknowledged.
    pub payload_mb_per_s: f64,
    /// Measured window length in seconds.
    pub measured_s: f64,
    /// OK replies in the window.
    pub ok_requests: u64,
    /// Failed requests by code in the window.
    pub errors: BTreeMap<String, u64>,
    /// Open-loop requests refused locally by `inflight_max`.
    pub overflowed: u64,
    /// Latency from the scheduled time.
    pub latency: Percentiles,
    /// Service time from the actual send.
    pub service: Percentiles,
    /// Produced-data checks.
    pub verification: Verification,
}

impl RunReport {
    /// Builds the report of a recorder over `measured`.
    pub fn new(
        config: &LoadConfig,
        recorder: &Recorder,
        measured: Duration,
        verification: Verification,
    ) -> RunReport {
        let seconds = measured.as_secs_f64().max(1e-9);
        let records_per_s = recorder.ok_records as f64 / seconds;
        RunReport {
            config: config.clone(),
            mode: if config.closed_loop.is_some() {
                "closed"
            } else {
                "open"
            },
            target_rate: if config.closed_loop.is_some() {
                0.0
            } else {
                config.rate
            },
            achieved_rate: recorder.ok_requests as f64 / seconds,
            records_per_s,
            payload_mb_per_s: records_per_s * f64::from(config.record_bytes) / 1e6,
            measured_s: seconds,
            ok_requests: recorder.ok_requests,
            errors: recorder.errors.clone(),
            overflowed: recorder.overflowed,
            latency: Percentiles::of(&recorder.latency_us),
            service: Percentiles::of(&recorder.service_us),
            verification,
        }
    }

    /// True when nothing failed and the verification found no problem.
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty() && self.overflowed == 0 && self.verification.problems.is_empty()
    }

    /// The human summary.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "{:?} {} loop: {:.0} req/s achieved (target {:.0}), {:.0} records/s, {:.1} MB/s over {:.1} s\n",
            self.config.shape,
            self.mode,
            self.achieved_rate,
            self.target_rate,
            self.records_per_s,
            self.payload_mb_per_s,
            self.measured_s
        );
        for (name, percentiles) in [("latency", &self.latency), ("service", &self.service)] {
            let points: Vec<String> = percentiles
                .points_us
                .iter()
                .map(|(p, v)| format!("p{p}={v}us"))
                .collect();
            out += &format!("  {name}: {}\n", points.join(" "));
        }
        out += &format!(
            "  errors: {:?}, overflowed: {}, verified: {} acks / {} records, {} partitions ok, {} read back, {} stored unacked (failed requests), problems: {:?}",
            self.errors,
            self.overflowed,
            self.verification.acked_batches,
            self.verification.acked_records,
            self.verification.partitions_ok,
            self.verification.read_back_records,
            self.verification.unacked_stored_records,
            self.verification.problems
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorder_counts_and_percentiles() {
        let mut recorder = Recorder::new();
        for us in 1..=100u64 {
            recorder.ok(
                Duration::from_micros(us * 10),
                Duration::from_micros(us),
                10,
            );
        }
        recorder.error("UNAVAILABLE");
        assert_eq!(recorder.ok_records, 1000);
        let latency = Percentiles::of(&recorder.latency_us);
        assert!((495..=505).contains(&latency.at(50.0)));
        assert!((995..=1001).contains(&latency.at(100.0)));
        assert_eq!(recorder.errors["UNAVAILABLE"], 1);
    }
}
