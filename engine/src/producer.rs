//! Idempotent-producer state: the last few batches of each producer, to recognise retries
//! and reject gaps. Rebuilt on open from the checkpoint snapshot plus the log past it.

use std::collections::{BTreeMap, VecDeque};

/// Batches remembered per producer (a retry older than this is rejected as stale).
pub(crate) const PRODUCER_BATCHES_MAX: usize = 5;
/// Producers remembered per partition; the one with the oldest last append is evicted.
pub(crate) const PRODUCERS_MAX: usize = 10_000;

/// One appended idempotent batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProducerBatch {
    pub sequence: u64,
    pub record_count: u32,
    pub base_offset: u64,
}

impl ProducerBatch {
    fn next_sequence(&self) -> u64 {
        self.sequence.saturating_add(u64::from(self.record_count))
    }
}

/// Verdict on an incoming idempotent batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SequenceCheck {
    /// Append it.
    Fresh,
    /// Already appended: answer with these offsets.
    Duplicate(ProducerBatch),
    /// Sequence skips ahead of `expected`.
    Gap { expected: u64 },
    /// Older than the remembered window.
    Stale { expected: u64 },
}

/// Per-partition producer table.
#[derive(Debug, Default, Clone)]
pub(crate) struct ProducerTable {
    producers: BTreeMap<u64, VecDeque<ProducerBatch>>,
}

impl ProducerTable {
    /// Classifies a batch from `producer_id` starting at `sequence`.
    ///
    /// A producer the table does not know (new, evicted, or whose batches a crash cut away)
    /// must start at sequence 0. Accepting any sequence would let a later batch of a pipeline
    /// append while an earlier one was refused, out of order and unnoticed; the gap tells the
    /// client that nothing from that point on was appended, so it may renumber and resend.
    pub(crate) fn check(
        &self,
        producer_id: u64,
        sequence: u64,
        record_count: u32,
    ) -> SequenceCheck {
        let known = self.producers.get(&producer_id).filter(|b| !b.is_empty());
        let Some(batches) = known else {
            return if sequence == 0 {
                SequenceCheck::Fresh
            } else {
                SequenceCheck::Gap { expected: 0 }
            };
        };
        let expected = batches.back().map_or(0, ProducerBatch::next_sequence);
        if sequence == expected {
            return SequenceCheck::Fresh;
        }
        if sequence > expected {
            return SequenceCheck::Gap { expected };
        }
        match batches
            .iter()
            .find(|b| b.sequence == sequence && b.record_count == record_count)
        {
            Some(b) => SequenceCheck::Duplicate(*b),
            None => SequenceCheck::Stale { expected },
        }
    }

    /// Records an appended batch (or one replayed from the log; replays of batches already
    /// known are ignored, so replay is idempotent).
    pub(crate) fn record(&mut self, producer_id: u64, batch: ProducerBatch) {
        if !self.producers.contains_key(&producer_id) && self.producers.len() >= PRODUCERS_MAX {
            self.evict_oldest();
        }
        let batches = self.producers.entry(producer_id).or_default();
        if batches
            .back()
            .is_some_and(|last| batch.sequence < last.next_sequence())
        {
            return;
        }
        batches.push_back(batch);
        while batches.len() > PRODUCER_BATCHES_MAX {
            batches.pop_front();
        }
    }

    fn evict_oldest(&mut self) {
        let oldest = self
            .producers
            .iter()
            .min_by_key(|(_, b)| b.back().map_or(0, |x| x.base_offset))
            .map(|(id, _)| *id);
        if let Some(id) = oldest {
            self.producers.remove(&id);
        }
    }

    /// The batches wholly below `durable_offset`, per producer (for a checkpoint, which must
    /// not claim batches a crash could still lose).
    pub(crate) fn snapshot(&self, durable_offset: u64) -> Vec<(u64, Vec<ProducerBatch>)> {
        self.producers
            .iter()
            .map(|(id, batches)| {
                let durable = batches
                    .iter()
                    .filter(|b| b.base_offset + u64::from(b.record_count) <= durable_offset)
                    .copied()
                    .collect::<Vec<_>>();
                (*id, durable)
            })
            .filter(|(_, b)| !b.is_empty())
            .collect()
    }

    /// Forgets batches at or past `offset` (after a torn tail is cut there).
    pub(crate) fn retain_below(&mut self, offset: u64) {
        for batches in self.producers.values_mut() {
            batches.retain(|b| b.base_offset < offset);
        }
        self.producers.retain(|_, b| !b.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(sequence: u64, record_count: u32, base_offset: u64) -> ProducerBatch {
        ProducerBatch {
            sequence,
            record_count,
            base_offset,
        }
    }

    #[test]
    fn fresh_duplicate_gap_stale() {
        let mut t = ProducerTable::default();
        assert_eq!(t.check(1, 0, 2), SequenceCheck::Fresh);
        assert_eq!(
            t.check(1, 2, 1),
            SequenceCheck::Gap { expected: 0 },
            "an unknown producer starts at 0"
        );
        t.record(1, batch(0, 2, 10));
        assert_eq!(t.check(1, 2, 1), SequenceCheck::Fresh);
        assert_eq!(t.check(1, 0, 2), SequenceCheck::Duplicate(batch(0, 2, 10)));
        assert_eq!(t.check(1, 5, 1), SequenceCheck::Gap { expected: 2 });
        for i in 0..PRODUCER_BATCHES_MAX as u64 {
            t.record(1, batch(2 + i, 1, 20 + i));
        }
        assert_eq!(t.check(1, 0, 2), SequenceCheck::Stale { expected: 7 });
        t.record(1, batch(3, 1, 99)); // replay of a known batch: ignored
        assert_eq!(t.check(1, 7, 1), SequenceCheck::Fresh);
    }

    #[test]
    fn snapshot_excludes_non_durable() {
        let mut t = ProducerTable::default();
        t.record(1, batch(0, 2, 0));
        t.record(1, batch(2, 2, 2));
        assert_eq!(t.snapshot(3), vec![(1, vec![batch(0, 2, 0)])]);
        assert!(t.snapshot(1).is_empty());
    }
}
