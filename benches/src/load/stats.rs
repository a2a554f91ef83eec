//! Latency and throughput recording of one run, and its report (the final
//! summary and the JSON line).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::config::LoadConfig;

/// Largest latency a histogram holds (longer ones are clamped to it).
pub const LATENCY_US_MAX: u64 = 60_000_000;
/// Significant digits of the histograms.
const HISTOGRAM_DIGITS: u8 = 3;

/// Most windows a timeline holds (`--timeline-ms` against `--duration-s`).
pub const TIMELINE_WINDOWS_MAX: u64 = 1000;
/// Significant digits of a timeline window's histogram (fewer than the run's: a thousand of
/// them stay within a few tens of MiB).
const TIMELINE_HISTOGRAM_DIGITS: u8 = 2;

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
    /// Latency per window of due time (`--timeline-ms`).
    pub timeline: Option<Timeline>,
}

impl Default for Recorder {
    fn default() -> Recorder {
        Recorder::new(None)
    }
}

impl Recorder {
    /// An empty recorder, with a timeline when given one.
    pub fn new(timeline: Option<Timeline>) -> Recorder {
        Recorder {
            latency_us: histogram(HISTOGRAM_DIGITS),
            service_us: histogram(HISTOGRAM_DIGITS),
            ok_requests: 0,
            ok_records: 0,
            errors: BTreeMap::new(),
            overflowed: 0,
            timeline,
        }
    }

    /// One successful request of `records` records, due at `due`.
    pub fn ok(&mut self, due: Instant, latency: Duration, service: Duration, records: u64) {
        self.latency_us.saturating_record(micros(latency));
        self.service_us.saturating_record(micros(service));
        self.ok_requests += 1;
        self.ok_records += records;
        if let Some(timeline) = &mut self.timeline {
            timeline.record(due, micros(latency));
        }
    }

    /// One failed request.
    pub fn error(&mut self, code: &str) {
        *self.errors.entry(code.to_owned()).or_default() += 1;
    }
}

fn histogram(digits: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, digits)
        .expect("constant histogram bounds are valid")
}

/// Latency of the measured window cut into equal windows of due time: shows when the tail
/// happened (a stall every 100 ms looks different from a slow minute).
#[derive(Debug)]
pub struct Timeline {
    origin: Instant,
    window: Duration,
    windows: Vec<Histogram<u64>>,
}

impl Timeline {
    /// Windows of `window` from `origin` covering `measured` (at most
    /// [`TIMELINE_WINDOWS_MAX`]; later due times are not recorded).
    pub fn new(origin: Instant, window: Duration, measured: Duration) -> Timeline {
        assert!(!window.is_zero(), "a timeline window is longer than zero");
        let count = measured.as_nanos().div_ceil(window.as_nanos()).max(1);
        let count = count.min(u128::from(TIMELINE_WINDOWS_MAX)) as usize;
        Timeline {
            origin,
            window,
            windows: (0..count)
                .map(|_| histogram(TIMELINE_HISTOGRAM_DIGITS))
                .collect(),
        }
    }

    fn record(&mut self, due: Instant, latency_us: u64) {
        let since = due.saturating_duration_since(self.origin);
        let index = since.as_nanos() / self.window.as_nanos();
        if let Some(window) = usize::try_from(index)
            .ok()
            .and_then(|i| self.windows.get_mut(i))
        {
            window.saturating_record(latency_us);
        }
    }

    /// One summary per window, in time order.
    pub fn report(&self) -> Vec<TimelineWindow> {
        let window_ms = self.window.as_secs_f64() * 1e3;
        self.windows
            .iter()
            .enumerate()
            .map(|(i, h)| TimelineWindow {
                start_ms: i as f64 * window_ms,
                requests: h.len(),
                p50_us: h.value_at_percentile(50.0),
                p99_us: h.value_at_percentile(99.0),
                max_us: h.max(),
            })
            .collect()
    }
}

/// One window of a [`Timeline`]: requests due in it and their latency.
#[derive(Debug, Clone, Serialize)]
pub struct TimelineWindow {
    /// Window start, in ms after the measured window's start.
    pub start_ms: f64,
    /// Requests answered OK (records, for the producer shape).
    pub requests: u64,
    /// Median latency in microseconds.
    pub p50_us: u64,
    /// 99th percentile latency in microseconds.
    pub p99_us: u64,
    /// Largest latency in microseconds.
    pub max_us: u64,
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
    /// Latency per window of due time (`--timeline-ms`; empty without it).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<TimelineWindow>,
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
            timeline: recorder
                .timeline
                .as_ref()
                .map(Timeline::report)
                .unwrap_or_default(),
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
        for w in &self.timeline {
            out += &format!(
                "  window {:>9.1} ms: {:>8} ok, latency p50={}us p99={}us max={}us\n",
                w.start_ms, w.requests, w.p50_us, w.p99_us, w.max_us
            );
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
        let mut recorder = Recorder::new(None);
        let due = Instant::now();
        for us in 1..=100u64 {
            recorder.ok(
                due,
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

    #[test]
    fn timeline_puts_each_request_in_the_window_it_was_due() {
        let origin = Instant::now();
        let window = Duration::from_millis(100);
        let timeline = Timeline::new(origin, window, Duration::from_millis(250));
        let mut recorder = Recorder::new(Some(timeline));
        let at = |ms| origin + Duration::from_millis(ms);
        let us = Duration::from_micros;
        recorder.ok(at(10), us(500), us(500), 1);
        recorder.ok(at(99), us(700), us(700), 1);
        recorder.ok(at(150), us(9000), us(9000), 1);
        recorder.ok(at(400), us(1), us(1), 1); // past the measured window: not in one
        let report = recorder.timeline.as_ref().map(Timeline::report).unwrap();
        let windows: Vec<_> = report.iter().map(|w| (w.requests, w.max_us)).collect();
        assert_eq!(windows.len(), 3);
        assert_eq!(windows[0].0, 2);
        assert!((695..=705).contains(&windows[0].1));
        assert_eq!(windows[1].0, 1);
        assert!((8950..=9050).contains(&windows[1].1));
        assert_eq!(windows[2], (0, 0));
        assert_eq!(report[1].start_ms, 100.0);
        assert_eq!(recorder.ok_requests, 4);
    }
}
