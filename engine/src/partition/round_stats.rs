//! Shard-wide histograms of sync rounds: where a durable append's time goes.
//!
//! A durable append waits for a round to pick it up (group commit: the previous round is
//! still writing or syncing), then for the round's writes, then for its fdatasync. Each phase
//! has its own histogram, shared by all of a shard's partitions, so an operator can tell a
//! slow device write from a slow flush from a queue of rounds without tracing. Recorded once
//! per round, on the shard's own executor (`!Send`, no atomics).

use std::cell::RefCell;
use std::time::Duration;

/// Upper bounds of the round histograms' buckets, microseconds (a last bucket takes the rest).
pub const SYNC_ROUND_BUCKETS_US: [u64; 14] = [
    25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

/// A latency histogram over [`SYNC_ROUND_BUCKETS_US`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LatencyHistogram {
    /// Samples per bucket (not cumulative); the last entry counts samples above every bound.
    pub bucket_counts: [u64; SYNC_ROUND_BUCKETS_US.len() + 1],
    /// Samples recorded.
    pub count: u64,
    /// Sum of all samples, microseconds.
    pub sum_us: u64,
}

impl LatencyHistogram {
    /// Records one sample.
    pub fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let bucket = SYNC_ROUND_BUCKETS_US.partition_point(|&bound| bound < us);
        self.bucket_counts[bucket] += 1;
        self.count += 1;
        self.sum_us = self.sum_us.saturating_add(us);
    }

    /// Cumulative counts per bound (Prometheus `le` buckets, `+Inf` excluded: that is `count`).
    pub fn cumulative(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        SYNC_ROUND_BUCKETS_US
            .iter()
            .zip(self.bucket_counts.iter())
            .scan(0, |total, (&bound, &n)| {
                *total += n;
                Some((bound, *total))
            })
    }
}

/// The three phases of a shard's sync rounds (see [`crate::Shard::sync_round_stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SyncRoundStats {
    /// From the first append a round carries until the round issues its writes.
    pub wait: LatencyHistogram,
    /// From issuing a round's writes until all completed.
    pub write: LatencyHistogram,
    /// From issuing a round's fdatasync until it completed.
    pub fdatasync: LatencyHistogram,
}

/// One round's phases, measured by the partition's flusher.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RoundTimes {
    pub wait: Duration,
    pub write: Duration,
    pub fdatasync: Duration,
}

/// The shard's recorder, shared by its partitions.
#[derive(Debug, Default)]
pub(crate) struct SyncRoundRecorder {
    stats: RefCell<SyncRoundStats>,
}

impl SyncRoundRecorder {
    pub(crate) fn record(&self, times: RoundTimes) {
        let mut stats = self.stats.borrow_mut();
        stats.wait.record(times.wait);
        stats.write.record(times.write);
        stats.fdatasync.record(times.fdatasync);
    }

    pub(crate) fn stats(&self) -> SyncRoundStats {
        *self.stats.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_land_in_the_first_bucket_whose_bound_covers_them() {
        let mut h = LatencyHistogram::default();
        for us in [0, 25, 26, 999, 1_000, 1_001, 2_000_000] {
            h.record(Duration::from_micros(us));
        }
        assert_eq!(h.count, 7);
        assert_eq!(h.sum_us, 25 + 26 + 999 + 1_000 + 1_001 + 2_000_000);
        let cumulative: Vec<(u64, u64)> = h.cumulative().collect();
        assert_eq!(cumulative[0], (25, 2)); // 0 and 25
        assert_eq!(cumulative[1], (50, 3)); // + 26
        assert_eq!(cumulative[5], (1_000, 5)); // + 999 and 1,000
        assert_eq!(cumulative[6], (2_500, 6)); // + 1,001
        assert_eq!(cumulative.last(), Some(&(1_000_000, 6)));
        assert_eq!(h.bucket_counts[SYNC_ROUND_BUCKETS_US.len()], 1); // 2 s, above every bound
    }
}
