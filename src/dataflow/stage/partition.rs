//! Phase 3, partition: route the winning entries to their parts, then write
//! one round of parts at a time, each part by its own worker for both servers.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange as ExchangePact;
use timely::dataflow::operators::{Capability, Input, Operator, Probe};
use timely::dataflow::{InputHandleVec, ProbeHandle};
use timely::worker::Worker;

use super::counts::StageCounts;
use super::scan::{Order, ReadEntry, ReadPings};
use super::{sorter, StageJob};
use crate::dataflow::{on_disk, Error, Failure};
use crate::storage::location::StorageError;
use crate::storage::spill::{SortedRecords, Spilled, SpilledRecords};
use crate::storage::staged::{write_part, StagedLayout};
use crate::wire::report_id::ReportId;
use crate::wire::Role;

/// An entry on its way to its part: sorted by part, then by place in the spill.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct RoutedEntry {
    pub(super) slot: u32,
    pub(super) shares: Spilled,
    pub(super) report_id: ReportId,
}

/// A report on its way to the worker that writes its part.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub(super) struct StagedReport {
    /// The part, as a place in [`PartSlots`].
    pub(super) slot: u32,
    pub(super) report_id: ReportId,
    #[serde(with = "serde_bytes")]
    pub(super) share_a: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub(super) share_b: Vec<u8>,
}

/// Every part of every batch id in one global order (batch ids sorted, then
/// part number). A part's place in that order is its slot: worker
/// `slot % peers` writes it in round `slot / peers`, so every worker writes
/// its share of parts, one per round.
pub(super) struct PartSlots {
    pub(super) parts: Vec<(String, u32)>,
    /// Per batch id: its first slot and its number of parts.
    pub(super) batches: HashMap<String, (u32, u32)>,
}

impl PartSlots {
    /// Enough parts per batch id that each holds about `partition_size` share bytes.
    fn new(totals: &StageCounts, partition_size: u64) -> Self {
        let sizes = totals
            .batches
            .iter()
            .filter(|(_, counts)| counts.share_bytes > 0)
            .map(|(batch_id, counts)| (batch_id.as_str(), counts.share_bytes));
        let mut slots = PartSlots {
            parts: Vec::new(),
            batches: HashMap::new(),
        };
        for (batch_id, bytes) in sizes {
            let count = bytes
                .div_ceil(partition_size.max(1))
                .clamp(1, u64::from(u32::MAX)) as u32;
            let first = slots.parts.len() as u32;
            slots
                .parts
                .extend((0..count).map(|part| (batch_id.to_string(), part)));
            slots.batches.insert(batch_id.to_string(), (first, count));
        }
        slots
    }

    /// The slot of a report's part: `u64be(report_id[0..8]) mod parts`.
    fn of(&self, batch_id: &str, id: &ReportId) -> usize {
        let (first, count) = self.batches[batch_id];
        let position = u64::from_be_bytes(id[..8].try_into().expect("8 bytes"));
        first as usize + (position % u64::from(count)) as usize
    }
}

/// Phase 3a: every entry this worker read, but those of losing copies,
/// sorted by part (then by place in the spill) on local disk.
pub(super) fn route_entries(
    job: &StageJob,
    index: SpilledRecords<ReadEntry>,
    losers: SortedRecords<Order>,
    batch_ids: &[String],
    slots: &PartSlots,
) -> Result<SortedRecords<RoutedEntry>, Error> {
    let mut losers = losers.peekable();
    let mut routed = sorter(job)?;
    // Both are in input order, so one pass over each finds the losers.
    for entry in index {
        let entry = on_disk(entry)?;
        // An error is taken too, to be raised.
        while let Some(lost) =
            losers.next_if(|lost| lost.as_ref().map_or(true, |l| *l < entry.order))
        {
            on_disk(lost)?;
        }
        // Not taken: all entries of a ping share its order.
        if matches!(losers.peek(), Some(Ok(lost)) if *lost == entry.order) {
            continue;
        }
        let slot = slots.of(&batch_ids[entry.batch as usize], &entry.report_id);
        on_disk(routed.push(RoutedEntry {
            slot: slot as u32,
            shares: entry.shares,
            report_id: entry.report_id,
        }))?;
    }
    on_disk(routed.finish())
}

/// Phase 3: route entries to parts, then write them in rounds, as a dataflow:
///
/// `reports -> (by part) WriteParts -> probe`
///
/// Epoch `r` is round `r`: every worker reads the shares of the round's
/// parts back from its spill and sends them to the parts' writers (part
/// `slot` is worker `slot % peers`'), and a writer sorts and writes its part
/// once the frontier has passed the round. The next round starts once every
/// part of this one is written, so a worker holds one part at a time.
pub(super) fn partition(
    worker: &mut Worker,
    job: &Arc<StageJob>,
    (read, losers): (ReadPings, SortedRecords<Order>),
    totals: &StageCounts,
) -> Result<StageCounts, Error> {
    let peers = worker.peers();
    let slots = Rc::new(PartSlots::new(totals, job.partition_size));
    let ReadPings {
        spill,
        index: entries,
        batch_ids,
        ..
    } = read;
    let routed = route_entries(job, on_disk(entries.finish())?, losers, &batch_ids, &slots)?;
    let mut routed = routed.peekable();
    let mut spill = on_disk(spill.finish())?;

    let failure = Failure::default();
    let written = Rc::new(RefCell::new(StageCounts::default()));
    let mut reports = InputHandleVec::<u64, StagedReport>::new();
    let probe = ProbeHandle::new();
    worker.dataflow::<u64, _, _>(|scope| {
        let (job, slots, failure, written) =
            (job.clone(), slots.clone(), failure.clone(), written.clone());
        scope
            .input_from(&mut reports)
            .unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
                ExchangePact::new(|r: &StagedReport| u64::from(r.slot)),
                "WriteParts",
                move |_, _| {
                    // The rows of this worker's part of the round, under the
                    // round's capability until the part is written.
                    let mut parts: HashMap<u32, (Capability<u64>, Vec<StagedReport>)> =
                        HashMap::new();
                    move |(input, frontier), _output| {
                        input.for_each(|cap, data| {
                            let cap = cap.retain_least(0).expect("input batches have a time");
                            for report in data.drain(..) {
                                let part = parts
                                    .entry(report.slot)
                                    .or_insert_with(|| (cap.clone(), Vec::new()));
                                part.1.push(report);
                            }
                        });
                        let whole: Vec<u32> = parts
                            .iter()
                            .filter(|(_, (round, _))| !frontier.less_equal(round.time()))
                            .map(|(slot, _)| *slot)
                            .collect();
                        for slot in whole {
                            let (_round, rows) = parts.remove(&slot).expect("listed");
                            if !failure.failed() {
                                let (batch_id, part) = &slots.parts[slot as usize];
                                let counts = &mut written.borrow_mut();
                                failure
                                    .keep(write_part_for_both(&job, batch_id, *part, rows, counts));
                            }
                        }
                    }
                },
            )
            .probe_with(&probe);
    });
    let total = slots.parts.len();
    for round in 0..total.div_ceil(peers) as u64 {
        let round_end = ((round + 1) * peers as u64) as u32;
        let mut sent = 0u64;
        // In spill order within each part, so the spill is read front to back;
        // an error is taken too, to be raised.
        while let Some(entry) = routed.next_if(|e| e.as_ref().map_or(true, |e| e.slot < round_end))
        {
            let entry = on_disk(entry)?;
            let (share_a, share_b) = on_disk(spill.read(entry.shares))?;
            reports.send(StagedReport {
                slot: entry.slot,
                report_id: entry.report_id,
                share_a,
                share_b,
            });
            sent += 1;
            if sent.is_multiple_of(64) {
                worker.step();
            }
        }
        reports.advance_to(round + 1);
        failure.step_until(worker, || !probe.less_than(&(round + 1)))?;
    }
    Ok(written.take())
}

/// Sorts a part's reports by id and writes the part for both servers.
pub(super) fn write_part_for_both(
    job: &StageJob,
    batch_id: &str,
    part: u32,
    mut rows: Vec<StagedReport>,
    counters: &mut StageCounts,
) -> Result<(), Error> {
    rows.sort_unstable_by_key(|r| r.report_id);
    let count = rows.len() as u64;
    let (shares_a, shares_b): (Vec<_>, Vec<_>) = rows
        .into_iter()
        .map(|r| {
            (
                (r.report_id, Bytes::from(r.share_a)),
                (r.report_id, Bytes::from(r.share_b)),
            )
        })
        .unzip();
    for (role, shares) in Role::BOTH.into_iter().zip([shares_a, shares_b]) {
        let name = StagedLayout::part_name(batch_id, part, job.output_format);
        let server = job.layout.server(role);
        let mut out = server.writer(&name)?;
        write_part(job.output_format, batch_id, role, &shares, &mut out).map_err(|source| {
            StorageError::Write {
                url: format!("{}/{name}", server.url()),
                source,
            }
        })?;
        out.finish()?;
    }
    let batch = counters.batch(batch_id);
    batch.entries += count;
    batch.parts += 1;
    Ok(())
}
