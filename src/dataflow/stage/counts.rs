//! What staging counts: files, pings and duplicates, rejected records by
//! reason, and per batch id its share bytes, entries and parts. Workers
//! count apart and add up with [`Merge`]; `_SUMMARY.json` and the cli's
//! table are rendered from these fields.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::dataflow::Merge;
use crate::wire::ping::PingRejection;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageCounts {
    pub files_listed: u64,
    pub files_read: u64,
    pub files_unreadable: u64,
    pub bytes_read: u64,
    pub pings_read: u64,
    pub duplicates_dropped: u64,
    /// Records (a line, a ping or one of its entries) not staged, by reason.
    pub rejected: BTreeMap<PingRejection, u64>,
    pub batches: BTreeMap<String, BatchCounts>,
}

/// One batch id's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchCounts {
    /// Both servers' share bytes, read: this sets how many parts the batch gets.
    pub share_bytes: u64,
    /// Entries staged, after duplicates were dropped.
    pub entries: u64,
    pub parts: u64,
}

impl Merge for BatchCounts {
    fn absorb(&mut self, other: Self) {
        self.share_bytes += other.share_bytes;
        self.entries += other.entries;
        self.parts += other.parts;
    }
}

impl Merge for StageCounts {
    fn absorb(&mut self, other: Self) {
        self.files_listed += other.files_listed;
        self.files_read += other.files_read;
        self.files_unreadable += other.files_unreadable;
        self.bytes_read += other.bytes_read;
        self.pings_read += other.pings_read;
        self.duplicates_dropped += other.duplicates_dropped;
        self.rejected.absorb(other.rejected);
        for (batch_id, counts) in other.batches {
            self.batches.entry(batch_id).or_default().absorb(counts);
        }
    }
}

impl StageCounts {
    pub fn reject(&mut self, reason: PingRejection) {
        *self.rejected.entry(reason).or_default() += 1;
    }

    pub fn batch(&mut self, batch_id: &str) -> &mut BatchCounts {
        if !self.batches.contains_key(batch_id) {
            self.batches
                .insert(batch_id.to_string(), BatchCounts::default());
        }
        self.batches.get_mut(batch_id).expect("inserted")
    }

    /// The `counters` of `_SUMMARY.json`: `files_listed`, `duplicates_dropped`,
    /// the other totals where not zero, `rejected/REASON`, and
    /// `entries/BATCH` and `parts/BATCH` for every batch id that got parts.
    pub fn summary(&self) -> BTreeMap<String, u64> {
        let mut flat = BTreeMap::from([
            ("files_listed".to_string(), self.files_listed),
            ("duplicates_dropped".to_string(), self.duplicates_dropped),
        ]);
        for (key, n) in [
            ("files_read", self.files_read),
            ("files_unreadable", self.files_unreadable),
            ("bytes_read", self.bytes_read),
            ("pings_read", self.pings_read),
        ] {
            if n > 0 {
                flat.insert(key.to_string(), n);
            }
        }
        for (reason, n) in &self.rejected {
            flat.insert(format!("rejected/{}", reason.reason()), *n);
        }
        for (batch_id, counts) in self.batches.iter().filter(|(_, c)| c.parts > 0) {
            flat.insert(format!("entries/{batch_id}"), counts.entries);
            flat.insert(format!("parts/{batch_id}"), counts.parts);
        }
        flat
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_across_workers_and_render_the_summary_keys() {
        let mut one = StageCounts {
            files_listed: 2,
            pings_read: 3,
            ..Default::default()
        };
        one.reject(PingRejection::BadJson);
        one.batch("x").share_bytes = 10;
        let mut two = StageCounts {
            files_read: 1,
            ..Default::default()
        };
        two.reject(PingRejection::BadJson);
        two.reject(PingRejection::BadShareBase64);
        *two.batch("x") = BatchCounts {
            share_bytes: 5,
            entries: 4,
            parts: 1,
        };
        two.batch("unstaged").share_bytes = 1;
        one.absorb(two);
        assert_eq!(one.batches["x"].share_bytes, 15);
        let summary = one.summary();
        let want: BTreeMap<String, u64> = [
            ("duplicates_dropped", 0),
            ("entries/x", 4),
            ("files_listed", 2),
            ("files_read", 1),
            ("parts/x", 1),
            ("pings_read", 3),
            ("rejected/bad_json", 2),
            ("rejected/bad_share_base64", 1),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(summary, want);
    }
}
