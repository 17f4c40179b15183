//! Which LSN may be confirmed to PostgreSQL, given which records Danube acknowledged.
//!
//! Records are numbered in the order they are handed to the runtime. A mark `(seq, lsn)`
//! says: once every record up to `seq` is acknowledged, the WAL before `lsn` is no longer
//! needed. Marks are pushed at each commit (its end LSN) and between transactions at
//! keepalives and heartbeats (the server's position).

use std::collections::VecDeque;

/// Pending marks and the confirmed position.
#[derive(Debug, Default)]
pub struct Marks {
    pending: VecDeque<(u64, u64)>,
    confirmed: u64,
}

impl Marks {
    /// Records that `lsn` may be confirmed once records up to `last_emitted` are acked.
    pub fn push(&mut self, last_emitted: u64, lsn: u64) {
        if lsn <= self.confirmed {
            return;
        }
        match self.pending.back_mut() {
            Some((seq, mark)) if *seq == last_emitted => *mark = (*mark).max(lsn),
            _ => self.pending.push_back((last_emitted, lsn)),
        }
    }

    /// Applies the acknowledged sequence number; returns the new confirmed LSN if it moved.
    pub fn ack(&mut self, acked: u64) -> Option<u64> {
        let before = self.confirmed;
        while let Some(&(seq, lsn)) = self.pending.front() {
            if seq > acked {
                break;
            }
            self.confirmed = self.confirmed.max(lsn);
            self.pending.pop_front();
        }
        (self.confirmed > before).then_some(self.confirmed)
    }

    /// The confirmed LSN (0 before the first confirmation).
    pub fn confirmed(&self) -> u64 {
        self.confirmed
    }

    /// Whether marks wait for acknowledgements.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_is_confirmed_only_when_its_last_record_is_acked() {
        let mut marks = Marks::default();
        // Transaction A: records 1..=3, ends at LSN 100; transaction B: records 4..=5, ends at 200.
        marks.push(3, 100);
        marks.push(5, 200);
        assert_eq!(marks.ack(2), None, "A is not complete");
        assert_eq!(marks.ack(3), Some(100));
        assert_eq!(marks.ack(4), None, "B is not complete");
        assert_eq!(marks.ack(5), Some(200));
        assert!(marks.is_empty());
    }

    #[test]
    fn idle_positions_wait_for_earlier_records_and_coalesce() {
        let mut marks = Marks::default();
        marks.push(0, 50); // nothing emitted yet: confirmable at once
        assert_eq!(marks.ack(0), Some(50));
        marks.push(7, 300); // commit of records up to 7
        marks.push(7, 310); // keepalive after it: same records, coalesced
        marks.push(7, 320); // heartbeat
        assert_eq!(marks.ack(6), None, "a keepalive never confirms past an unacked record");
        assert_eq!(marks.ack(7), Some(320));
        marks.push(7, 10);
        assert!(marks.is_empty(), "positions behind the confirmed one are ignored");
        assert_eq!(marks.confirmed(), 320);
    }
}
