//! The shard-wide budget of background zero-fill.
//!
//! Each partition keeps its active segment zero-filled ahead of the writer (see
//! `Partition::maybe_prezero`) so syncs never pay for allocating blocks. One fill is a
//! [`super::PREZERO_WRITE_BYTES`] write plus an fdatasync; a shard with a thousand partitions
//! each filling at once would swamp the disk and the request path behind it. The budget lets at
//! most [`ZERO_FILLS_PER_SHARD_MAX`] fills run at once on a shard: a partition that finds it
//! exhausted skips the fill and asks again on its next append, so the partitions appending most
//! often win the free slots, and a cold partition simply writes into unfilled space.

use std::cell::Cell;
use std::rc::Rc;

/// Background zero-fills in flight on one shard at most.
pub const ZERO_FILLS_PER_SHARD_MAX: usize = 2;

/// Counters of a shard's background zero-fill (see [`crate::Shard::zero_fill_stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ZeroFillStats {
    /// Fills running now.
    pub in_flight: usize,
    /// Most fills ever running at once (never above [`ZERO_FILLS_PER_SHARD_MAX`]).
    pub in_flight_peak: usize,
    /// Fills started.
    pub started: u64,
    /// Fills a partition wanted but skipped because the budget was exhausted.
    pub skipped_busy: u64,
}

/// The permits of one shard. Lives on the shard's executor (`!Send`).
#[derive(Debug, Default)]
pub(crate) struct ZeroFillBudget {
    stats: Cell<ZeroFillStats>,
}

impl ZeroFillBudget {
    /// A permit for one fill, or `None` (counted) when the shard's budget is exhausted.
    pub(crate) fn try_acquire(self: &Rc<Self>) -> Option<ZeroFillPermit> {
        let mut stats = self.stats.get();
        if stats.in_flight >= ZERO_FILLS_PER_SHARD_MAX {
            stats.skipped_busy += 1;
            self.stats.set(stats);
            return None;
        }
        stats.in_flight += 1;
        stats.in_flight_peak = stats.in_flight_peak.max(stats.in_flight);
        stats.started += 1;
        self.stats.set(stats);
        Some(ZeroFillPermit {
            budget: self.clone(),
        })
    }

    /// Counters so far.
    pub(crate) fn stats(&self) -> ZeroFillStats {
        self.stats.get()
    }
}

/// One fill's share of the budget, returned on drop (fill done, failed or abandoned).
#[derive(Debug)]
pub(crate) struct ZeroFillPermit {
    budget: Rc<ZeroFillBudget>,
}

impl Drop for ZeroFillPermit {
    fn drop(&mut self) {
        let mut stats = self.budget.stats.get();
        debug_assert!(stats.in_flight > 0, "a permit outlived its count");
        stats.in_flight = stats.in_flight.saturating_sub(1);
        self.budget.stats.set(stats);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_are_bounded_and_returned_on_drop() {
        let budget = Rc::new(ZeroFillBudget::default());
        let held: Vec<_> = (0..ZERO_FILLS_PER_SHARD_MAX)
            .map(|_| budget.try_acquire().expect("under the bound"))
            .collect();
        assert!(budget.try_acquire().is_none());
        assert_eq!(budget.stats().skipped_busy, 1);
        drop(held);
        assert_eq!(budget.stats().in_flight, 0);
        assert!(budget.try_acquire().is_some());
        let stats = budget.stats();
        assert_eq!(stats.in_flight_peak, ZERO_FILLS_PER_SHARD_MAX);
        assert_eq!(stats.started, ZERO_FILLS_PER_SHARD_MAX as u64 + 1);
    }
}
