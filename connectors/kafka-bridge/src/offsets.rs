//! Which Kafka offset to commit per partition, given the offsets the runtime reports as
//! acked by Danube and the records the bridge skipped (loop protection).
//!
//! The runtime calls `commit` with the offsets of records Danube acked, in poll order, so
//! for a partition every offset up to the reported one is in Danube: Kafka gets `offset + 1`.
//! A skipped record (one that came from this bridge) is never published, so it has no ack
//! of its own: it may be committed once every published record before it in its partition
//! was acked. The tracker remembers, per partition, "skipped up to S once the published
//! offset P is acked" and folds that in when `P` is reported.

use std::collections::{HashMap, VecDeque};

/// A Kafka topic and partition.
pub type TopicPartition = (String, i32);

/// Per-partition commit bookkeeping.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<TopicPartition, PartitionState>,
}

#[derive(Debug, Default)]
struct PartitionState {
    /// Highest offset returned by `poll` whose commit has not been seen yet.
    pending: Option<i64>,
    /// `(after, skipped)`: `skipped + 1` may be committed once `after` is acked.
    skips: VecDeque<(i64, i64)>,
    /// The last offset committed (next offset to read), to never move backwards.
    committed: Option<i64>,
}

impl OffsetTracker {
    /// Records that `poll` returned the record at `offset` (it will be published).
    pub fn returned(&mut self, tp: &TopicPartition, offset: i64) {
        let state = self.partitions.entry(tp.clone()).or_default();
        state.pending = Some(state.pending.map_or(offset, |p| p.max(offset)));
    }

    /// Records a skipped record. Returns the offset to commit right away when no
    /// published record of the partition is waiting for its ack.
    pub fn skipped(&mut self, tp: &TopicPartition, offset: i64) -> Option<i64> {
        let state = self.partitions.entry(tp.clone()).or_default();
        match state.pending {
            None => state.advance(offset + 1),
            Some(after) => {
                match state.skips.back_mut() {
                    Some((last_after, last_skip)) if *last_after == after => *last_skip = (*last_skip).max(offset),
                    _ => state.skips.push_back((after, offset)),
                }
                None
            }
        }
    }

    /// Danube acked every record of `tp` up to `offset`: the offset to commit, if it moves
    /// the committed position forward.
    pub fn acked(&mut self, tp: &TopicPartition, offset: i64) -> Option<i64> {
        let state = self.partitions.entry(tp.clone()).or_default();
        let mut next = offset + 1;
        while let Some((after, skipped)) = state.skips.front().copied() {
            if after > offset {
                break;
            }
            next = next.max(skipped + 1);
            state.skips.pop_front();
        }
        if state.pending.is_some_and(|p| p <= offset) {
            state.pending = None;
        }
        state.advance(next)
    }

    /// The partition changed owner (rebalance): forget the committed position, which the
    /// group may have moved; pending skips stay valid (they only depend on acks).
    pub fn reset_committed(&mut self) {
        for state in self.partitions.values_mut() {
            state.committed = None;
        }
    }
}

impl PartitionState {
    fn advance(&mut self, next: i64) -> Option<i64> {
        if self.committed.is_some_and(|c| c >= next) {
            return None;
        }
        self.committed = Some(next);
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp() -> TopicPartition {
        ("orders".into(), 0)
    }

    #[test]
    fn acked_offset_commits_the_next_one() {
        let mut t = OffsetTracker::default();
        t.returned(&tp(), 4);
        assert_eq!(t.acked(&tp(), 4), Some(5));
    }

    #[test]
    fn skip_with_nothing_pending_commits_at_once() {
        let mut t = OffsetTracker::default();
        assert_eq!(t.skipped(&tp(), 7), Some(8));
    }

    #[test]
    fn skip_after_a_pending_record_waits_for_its_ack() {
        let mut t = OffsetTracker::default();
        t.returned(&tp(), 3);
        assert_eq!(t.skipped(&tp(), 4), None);
        assert_eq!(t.skipped(&tp(), 5), None);
        t.returned(&tp(), 6);
        assert_eq!(t.skipped(&tp(), 7), None);
        // Offset 3 acked: 4 and 5 were skipped, so 6 is the next to read.
        assert_eq!(t.acked(&tp(), 3), Some(6));
        // 6 acked: 7 was skipped.
        assert_eq!(t.acked(&tp(), 6), Some(8));
        // Nothing pending any more: a new skip commits at once.
        assert_eq!(t.skipped(&tp(), 8), Some(9));
    }

    #[test]
    fn commits_never_move_backwards_after_a_re_read() {
        let mut t = OffsetTracker::default();
        t.returned(&tp(), 10);
        assert_eq!(t.acked(&tp(), 10), Some(11));
        t.returned(&tp(), 5);
        assert_eq!(t.acked(&tp(), 5), None);
        t.reset_committed();
        t.returned(&tp(), 6);
        assert_eq!(t.acked(&tp(), 6), Some(7));
    }
}
