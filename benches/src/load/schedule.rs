//! Arrival schedules of the open loop: the offset from the run's start at
//! which each request is due, and the partition choice per request.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};

use super::config::{KeyDistribution, ScheduleKind};

/// Zipf exponent of [`KeyDistribution::Zipf`].
const ZIPF_EXPONENT: f64 = 1.1;

/// A request due less than this far ahead is sent at once instead of after a timer sleep: one
/// glommio timer is an io_uring submission and cancellation, which at hundreds of thousands of
/// requests per second (a few microseconds apart) was the generator's largest cost. Latency is
/// then measured from the earlier of the due and the send time, so sending early never
/// shortens it.
pub const SCHEDULE_SLACK: Duration = Duration::from_micros(200);

/// Due times of successive requests, as offsets from the run's start.
#[derive(Debug)]
pub struct Arrivals {
    kind: ScheduleKind,
    interval_s: f64,
    next_s: f64,
    rng: SmallRng,
}

impl Arrivals {
    /// A schedule of `rate_per_s` requests per second.
    pub fn new(kind: ScheduleKind, rate_per_s: f64, seed: u64) -> Arrivals {
        assert!(rate_per_s > 0.0 && rate_per_s.is_finite());
        Arrivals {
            kind,
            interval_s: 1.0 / rate_per_s,
            next_s: 0.0,
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    /// The next request's due offset.
    pub fn next_due(&mut self) -> Duration {
        let due_s = self.next_s;
        let gap_s = match self.kind {
            ScheduleKind::Constant => self.interval_s,
            // Inverse transform of the exponential distribution; 1 - u is in (0, 1].
            ScheduleKind::Poisson => -(1.0 - self.rng.random::<f64>()).ln() * self.interval_s,
        };
        self.next_s += gap_s;
        Duration::from_secs_f64(due_s)
    }
}

/// Picks the partition of each batch.
#[derive(Debug)]
pub struct PartitionPicker {
    distribution: KeyDistribution,
    partitions: u32,
    next: u32,
    zipf: Option<Zipf<f64>>,
    rng: SmallRng,
}

impl PartitionPicker {
    /// A picker over `partitions` (>= 1) partitions.
    pub fn new(distribution: KeyDistribution, partitions: u32, seed: u64) -> PartitionPicker {
        assert!(partitions >= 1);
        let zipf = Zipf::new(f64::from(partitions), ZIPF_EXPONENT).ok();
        PartitionPicker {
            distribution,
            partitions,
            next: 0,
            zipf,
            rng: SmallRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15),
        }
    }

    /// The next batch's partition.
    pub fn pick(&mut self) -> u32 {
        match (self.distribution, &self.zipf) {
            (KeyDistribution::RoundRobin, _) => {
                let partition = self.next;
                self.next = (self.next + 1) % self.partitions;
                partition
            }
            (KeyDistribution::Zipf, Some(zipf)) => {
                // Zipf samples lie in [1, partitions].
                let rank = zipf.sample(&mut self.rng) as u32;
                rank.clamp(1, self.partitions) - 1
            }
            _ => self.rng.random_range(0..self.partitions),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_schedule_is_evenly_spaced() {
        let mut arrivals = Arrivals::new(ScheduleKind::Constant, 1000.0, 1);
        let dues: Vec<Duration> = (0..4).map(|_| arrivals.next_due()).collect();
        assert_eq!(dues[0], Duration::ZERO);
        assert_eq!(dues[3], Duration::from_secs_f64(0.003));
    }

    #[test]
    fn poisson_schedule_keeps_the_mean_rate() {
        let mut arrivals = Arrivals::new(ScheduleKind::Poisson, 1000.0, 7);
        let mut last = Duration::ZERO;
        for _ in 0..=10_000 {
            last = arrivals.next_due();
        }
        let seconds = last.as_secs_f64();
        assert!(
            (9.0..11.0).contains(&seconds),
            "10k arrivals took {seconds} s"
        );
    }

    #[test]
    fn pickers_stay_in_range() {
        for distribution in [
            KeyDistribution::RoundRobin,
            KeyDistribution::Uniform,
            KeyDistribution::Zipf,
        ] {
            let mut picker = PartitionPicker::new(distribution, 5, 3);
            assert!((0..1000).all(|_| picker.pick() < 5));
        }
        let mut round_robin = PartitionPicker::new(KeyDistribution::RoundRobin, 3, 0);
        let picks: Vec<u32> = (0..4).map(|_| round_robin.pick()).collect();
        assert_eq!(picks, [0, 1, 2, 0]);
    }
}
