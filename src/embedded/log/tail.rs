//! The newest durable records of a topic, kept in memory so a consumer
//! that keeps up never reads the log back, and the head offset consumers
//! wait on.

use std::collections::VecDeque;

use parking_lot::Mutex;

use crate::service::backend::TopicRecord;
use crate::service::watermark::Watermark;

/// Records kept in memory, newest last.
const TAIL_RECORDS: usize = 16 * 1024;

pub struct Tail {
    /// The last durable offset.
    pub head: Watermark,
    /// In offset order; offsets only grow (a failed write leaves a gap).
    records: Mutex<VecDeque<TopicRecord>>,
}

impl Tail {
    pub fn new(head: u64, newest: impl IntoIterator<Item = TopicRecord>) -> Tail {
        let tail = Tail {
            head: Watermark::new(head),
            records: Mutex::default(),
        };
        tail.keep(newest);
        tail
    }

    /// Called by the writer, in offset order, once the records are durable.
    pub fn append(&self, durable: impl IntoIterator<Item = TopicRecord>) {
        if let Some(last) = self.keep(durable) {
            self.head.advance(last);
        }
    }

    fn keep(&self, records: impl IntoIterator<Item = TopicRecord>) -> Option<u64> {
        let mut tail = self.records.lock();
        let mut last = None;
        for record in records {
            if tail.len() >= TAIL_RECORDS {
                tail.pop_front();
            }
            last = Some(record.position.offset);
            tail.push_back(record);
        }
        last
    }

    /// Up to `max` records after `position` from memory; `None` if some may
    /// have left it (or none are there): the caller reads the log.
    pub fn after(&self, position: u64, max: usize) -> Option<Vec<TopicRecord>> {
        let tail = self.records.lock();
        if tail.front()?.position.offset > position + 1 {
            return None;
        }
        let start = tail.partition_point(|r| r.position.offset <= position);
        let records: Vec<_> = tail.range(start..).take(max).cloned().collect();
        (!records.is_empty()).then_some(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn records(offsets: impl IntoIterator<Item = u64>) -> Vec<TopicRecord> {
        offsets
            .into_iter()
            .map(|offset| TopicRecord {
                position: crate::service::backend::Position {
                    partition: 0,
                    offset,
                },
                payload: Bytes::new(),
            })
            .collect()
    }

    fn offsets(r: Option<Vec<TopicRecord>>) -> Option<Vec<u64>> {
        r.map(|r| r.iter().map(|r| r.position.offset).collect())
    }

    #[test]
    fn serves_what_it_holds_and_sends_older_reads_to_the_log() {
        let tail = Tail::new(4, records(3..=4));
        tail.append(records([5, 6, 9]));
        assert_eq!(tail.head.get(), 9);
        assert_eq!(offsets(tail.after(4, 10)), Some(vec![5, 6, 9]));
        assert_eq!(offsets(tail.after(5, 1)), Some(vec![6]));
        assert_eq!(offsets(tail.after(6, 10)), Some(vec![9]), "across a gap");
        assert_eq!(offsets(tail.after(9, 10)), None, "nothing newer");
        assert_eq!(offsets(tail.after(1, 10)), None, "2 may have left it");
        assert_eq!(offsets(tail.after(2, 10)), Some(vec![3, 4, 5, 6, 9]));
    }
}
