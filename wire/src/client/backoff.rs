//! Reconnect/retry delays: exponential backoff with symmetric jitter
//! (base 100 ms doubling to a 5 s cap, +-25% by default), and the small
//! random source that draws the jitter.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// Exponential backoff schedule: attempt `n` (from 0) waits
/// `min(base * 2^n, max) * (1 +- jitter_ratio)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Delay before the first retry (before jitter). Default 100 ms.
    pub base: Duration,
    /// Cap of the exponential growth (before jitter). Default 5 s.
    pub max: Duration,
    /// Relative jitter in `[0, 1)`: the delay is scaled by a uniform factor
    /// in `[1 - jitter_ratio, 1 + jitter_ratio]`. Default 0.25.
    pub jitter_ratio: f64,
}

/// Doublings after which every base (>= 1 ns) has passed any sane cap;
/// bounds the shift so it never overflows.
const DOUBLINGS_MAX: u32 = 40;

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(5),
            jitter_ratio: 0.25,
        }
    }
}

impl Backoff {
    /// The un-jittered delay of retry `attempt` (0 = first retry).
    pub fn nominal(&self, attempt: u32) -> Duration {
        let factor = 1u64 << attempt.min(DOUBLINGS_MAX);
        let base_ns = u64::try_from(self.base.as_nanos()).unwrap_or(u64::MAX);
        let grown = Duration::from_nanos(base_ns.saturating_mul(factor));
        grown.min(self.max)
    }

    /// The delay of retry `attempt` with jitter drawn from `unit`, a uniform
    /// sample in `[0, 1]` (0.5 gives the nominal delay).
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let jitter = self.jitter_ratio.clamp(0.0, 0.999);
        let scale = 1.0 + jitter * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
        self.nominal(attempt).mul_f64(scale)
    }
}

/// A tiny non-cryptographic generator (xorshift64*) seeded from the
/// process's random hash keys: jitter and producer ids need spread, not
/// secrecy, and this keeps the crate free of an RNG dependency.
#[derive(Debug, Clone)]
pub struct Jitter {
    state: u64,
}

impl Default for Jitter {
    fn default() -> Jitter {
        Jitter::new()
    }
}

impl Jitter {
    /// A generator with a fresh random seed.
    pub fn new() -> Jitter {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_nanos()),
        );
        Jitter::with_seed(hasher.finish())
    }

    /// A generator with a fixed seed (tests).
    pub fn with_seed(seed: u64) -> Jitter {
        Jitter {
            state: seed | 1, // xorshift never leaves 0
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A uniform sample in `[0, 1]`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / ((1u64 << 53) - 1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nominal_schedule_doubles_from_base_to_cap() {
        let backoff = Backoff::default();
        let schedule_ms: Vec<u128> = (0..9).map(|n| backoff.nominal(n).as_millis()).collect();
        assert_eq!(
            schedule_ms,
            [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]
        );
        assert_eq!(backoff.nominal(u32::MAX), Duration::from_secs(5));
    }

    #[test]
    fn jitter_stays_within_a_quarter_of_nominal() {
        let backoff = Backoff::default();
        for attempt in 0..8 {
            let nominal = backoff.nominal(attempt);
            assert_eq!(backoff.delay(attempt, 0.5), nominal);
            assert_eq!(backoff.delay(attempt, 0.0), nominal.mul_f64(0.75));
            assert_eq!(backoff.delay(attempt, 1.0), nominal.mul_f64(1.25));
        }
        let mut jitter = Jitter::with_seed(7);
        let (mut low, mut high) = (false, false);
        for _ in 0..10_000 {
            let delay = backoff.delay(2, jitter.unit());
            assert!(delay >= Duration::from_millis(300) && delay <= Duration::from_millis(500));
            low |= delay < Duration::from_millis(325);
            high |= delay > Duration::from_millis(475);
        }
        assert!(low && high, "jitter spreads over the whole +-25% band");
    }
}
