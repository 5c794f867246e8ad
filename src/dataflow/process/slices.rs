//! How verification work is spread over workers. Each part's owner (part
//! `index % peers`) reads it and sends one slice of rows to every worker;
//! every worker verifies its slices and sends the resulting message rows
//! back; the owner writes the part's messages once every slice is in. All
//! workers share every part, so the speedup does not depend on how many
//! parts `stage` wrote.

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use serde::{Deserialize, Serialize};
use timely::worker::Worker;

use super::{count_rows, part_vdaf, ServerJob};
use crate::dataflow::{Channel, Error};
use crate::storage::messages::MessageRow;
use crate::storage::server::StagedPart;
use crate::storage::staged::StagedRow;
use crate::wire::protocol::{StatusCounts, Step};

/// A report as the worker verifying it gets it. `repeated` marks a report id
/// seen earlier in the same part: that copy is rejected as a duplicate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportRow {
    pub id: String,
    pub payload: bytes::Bytes,
    pub repeated: bool,
}

/// A part's reports in row order, repeats of a report id marked.
pub fn report_rows(rows: Vec<StagedRow>) -> Vec<ReportRow> {
    let mut seen = HashSet::new();
    rows.into_iter()
        .map(|row| ReportRow {
            repeated: !seen.insert(row.id.clone()),
            id: row.id,
            payload: row.payload,
        })
        .collect()
}

/// Rows `range` of a part, read again from the raw shares.
pub fn read_slice(
    job: &ServerJob,
    part: &StagedPart,
    range: Range<usize>,
) -> Result<Vec<ReportRow>, Error> {
    let mut rows = report_rows(job.buckets.read_part(part)?);
    rows.truncate(range.end);
    Ok(rows.split_off(range.start.min(rows.len())))
}

/// Rows `start..end` of part `part` (an index into the sorted parts), slice
/// `index` of `of`: the unit of verification work.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Slice {
    pub part: usize,
    pub index: usize,
    pub of: usize,
    pub start: usize,
    pub end: usize,
}

impl Slice {
    pub fn rows(&self) -> Range<usize> {
        self.start..self.end
    }
}

/// A slice's reports, from the part's owner to the worker verifying them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SliceReports {
    pub slice: Slice,
    pub rows: Vec<ReportRow>,
}

/// A slice's message rows, back to the part's owner. verify2 adds the
/// encoded sum of the output shares this server accepted in the slice.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SliceMessage {
    pub slice: Slice,
    pub rows: Vec<MessageRow>,
    #[serde(with = "serde_bytes")]
    pub accepted_sum: Vec<u8>,
}

/// The worker that reads part `index` and writes its messages.
fn owner(index: usize, peers: usize) -> u64 {
    (index % peers) as u64
}

/// The channel on which owners send slices to the workers verifying them.
pub fn slice_channel(worker: &mut Worker) -> Channel<SliceReports> {
    Channel::new(worker, "ScatterSlices", |s: &SliceReports| {
        s.slice.index as u64
    })
}

/// Reads part `index` and sends one slice of it to every worker.
pub fn scatter(
    job: &ServerJob,
    parts: &[StagedPart],
    index: usize,
    peers: usize,
    to: &mut Channel<SliceReports>,
) -> Result<(), Error> {
    let mut rows = report_rows(job.buckets.read_part(&parts[index])?);
    let total = rows.len();
    for k in (0..peers).rev() {
        let start = k * total / peers;
        let slice = rows.split_off(start);
        to.send(SliceReports {
            slice: Slice {
                part: index,
                index: k,
                of: peers,
                start,
                end: start + slice.len(),
            },
            rows: slice,
        });
    }
    Ok(())
}

/// A part owner's side of verification: collects the slices each worker
/// sends back and writes a part's messages once all its slices are in.
pub struct PartWriter<'a> {
    job: &'a ServerJob,
    parts: &'a [StagedPart],
    verify1: Channel<SliceMessage>,
    verify2: Channel<SliceMessage>,
    pending: [HashMap<usize, Vec<SliceMessage>>; 2],
    /// The step whose written parts are the pass's progress.
    last_step: Step,
    /// verify2's verdicts counted on this worker, by slice it finished.
    pub verify2_counts: StatusCounts,
}

impl<'a> PartWriter<'a> {
    /// A writer for a pass whose last step is `last_step`; every part this
    /// worker owns is expected of it.
    pub fn new(
        worker: &mut Worker,
        job: &'a ServerJob,
        parts: &'a [StagedPart],
        last_step: Step,
    ) -> Self {
        let peers = worker.peers();
        let owned = (worker.index()..parts.len()).step_by(peers).count();
        job.progress.expect(owned as u64);
        let route = move |m: &SliceMessage| owner(m.slice.part, peers);
        PartWriter {
            job,
            parts,
            verify1: Channel::new(worker, "GatherVerify1", route),
            verify2: Channel::new(worker, "GatherVerify2", route),
            pending: [HashMap::new(), HashMap::new()],
            last_step,
            verify2_counts: StatusCounts::new(),
        }
    }

    fn channel(&mut self, step: Step) -> &mut Channel<SliceMessage> {
        if step == Step::Verify1 {
            &mut self.verify1
        } else {
            &mut self.verify2
        }
    }

    /// Sends a slice's rows of `step` to the part's owner.
    pub fn send(&mut self, step: Step, message: SliceMessage) {
        if step == Step::Verify2 {
            count_rows(
                &mut self.verify2_counts,
                &self.parts[message.slice.part],
                &message.rows,
            );
        }
        self.channel(step).send(message);
    }

    /// Writes every part that became whole; returns whether any slice came in.
    pub fn write_whole_parts(&mut self) -> Result<bool, Error> {
        let mut any = false;
        for (k, step) in [Step::Verify1, Step::Verify2].into_iter().enumerate() {
            while let Some(message) = self.channel(step).take() {
                any = true;
                let (index, of) = (message.slice.part, message.slice.of);
                let slices = self.pending[k].entry(index).or_default();
                slices.push(message);
                if slices.len() == of {
                    let mut slices = self.pending[k].remove(&index).expect("present");
                    slices.sort_by_key(|m| m.slice.index);
                    self.write_part(step, &self.parts[index], slices)?;
                }
            }
        }
        Ok(any)
    }

    /// Sends a whole part's rows to the peer. verify2 also keeps the sum of
    /// the output shares this server accepted (not each share: the peer
    /// almost always agrees, and `aggregate` recomputes the sum where it
    /// does not).
    fn write_part(
        &self,
        step: Step,
        part: &StagedPart,
        slices: Vec<SliceMessage>,
    ) -> Result<(), Error> {
        let vdaf = part_vdaf(self.job, part);
        let mut sum = vdaf.aggregate_init();
        let mut rows = Vec::new();
        for slice in slices {
            if step == Step::Verify2 {
                vdaf.merge_encoded(&mut sum, &slice.accepted_sum)
                    .map_err(Error::vdaf(format!("{}: sum of slice", part.name)))?;
            }
            rows.extend(slice.rows);
        }
        self.job.buckets.send_rows(step, part, &rows)?;
        if step == self.last_step {
            self.job.progress.advance(1, rows.len() as u64);
        }
        if step == Step::Verify2 {
            self.job
                .buckets
                .keep_accepted_sum(part, vdaf.encode_aggregate(&sum))?;
        }
        Ok(())
    }

    /// Closes this worker's side of `step`'s channel and writes parts until
    /// every worker's slices of that step are written.
    pub fn finish(&mut self, worker: &mut Worker, step: Step) -> Result<(), Error> {
        self.channel(step).close();
        loop {
            let delivered = self.channel(step).delivered();
            // What arrived before the check is all there is once delivered.
            self.write_whole_parts()?;
            if delivered {
                return Ok(());
            }
            worker.step_or_park(None);
        }
    }
}
