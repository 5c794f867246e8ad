//! How verification work is spread over workers. Each part's owner (part
//! `index % peers`) reads it and sends one slice of rows to every worker;
//! every worker verifies its slices and sends the resulting message rows
//! back; the owner writes the part's messages once every slice is in. All
//! workers share every part, so the speedup does not depend on how many
//! parts `stage` wrote.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::rc::Rc;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{count_rows, part_vdaf, ServerJob};
use crate::dataflow::Error;
use crate::storage::messages::MessageRow;
use crate::storage::server::{ServerBuckets, StagedPart};
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

/// Cuts part `index`'s rows into one slice per worker, in row order.
pub fn cut(index: usize, mut rows: Vec<ReportRow>, peers: usize) -> Vec<SliceReports> {
    let total = rows.len();
    let mut slices: Vec<SliceReports> = (0..peers)
        .rev()
        .map(|k| {
            let start = k * total / peers;
            let rows = rows.split_off(start);
            SliceReports {
                slice: Slice {
                    part: index,
                    index: k,
                    of: peers,
                    start,
                    end: start + rows.len(),
                },
                rows,
            }
        })
        .collect();
    slices.reverse();
    slices
}

/// A part owner's side of verification: collects the slices each worker
/// sends back and, once all of a part's slices of a step are in, counts its
/// rows and hands back the part's write (which `WriteParts` makes on its
/// storage thread).
pub struct PartWriter {
    job: Arc<ServerJob>,
    parts: Rc<[StagedPart]>,
    pending: HashMap<(Step, usize), Vec<SliceMessage>>,
    /// The step whose written parts are the pass's progress.
    last_step: Step,
    /// The rows of whole parts, by step, batch id and status, counted as
    /// their writes are handed out: what `close_step` sums once the
    /// probe says they are written.
    row_counts: Rc<RefCell<HashMap<Step, StatusCounts>>>,
}

impl PartWriter {
    /// A writer for a pass whose last step is `last_step`, on worker
    /// `index` of `peers`: every part this worker owns is expected of it.
    /// The counts of the rows it writes go to `row_counts`.
    pub fn new(
        job: Arc<ServerJob>,
        parts: Rc<[StagedPart]>,
        (index, peers): (usize, usize),
        last_step: Step,
        row_counts: Rc<RefCell<HashMap<Step, StatusCounts>>>,
    ) -> Self {
        let owned = (index..parts.len()).step_by(peers).count();
        job.progress.expect(owned as u64);
        PartWriter {
            job,
            parts,
            pending: HashMap::new(),
            last_step,
            row_counts,
        }
    }

    /// The worker that owns, and writes, the part of `message`.
    pub fn route(peers: usize) -> impl Fn(&(Step, SliceMessage)) -> u64 {
        move |(_, message)| owner(message.slice.part, peers)
    }

    /// Takes one slice's rows of `step`; once the part is whole, counts
    /// its rows and returns its write.
    pub fn take(&mut self, step: Step, message: SliceMessage) -> Result<Option<PartWrite>, Error> {
        let (index, of) = (message.slice.part, message.slice.of);
        let slices = self.pending.entry((step, index)).or_default();
        slices.push(message);
        if slices.len() < of {
            return Ok(None);
        }
        let mut slices = self.pending.remove(&(step, index)).expect("present");
        slices.sort_by_key(|m| m.slice.index);
        self.whole_part(step, index, slices).map(Some)
    }

    fn whole_part(
        &self,
        step: Step,
        index: usize,
        slices: Vec<SliceMessage>,
    ) -> Result<PartWrite, Error> {
        let part = &self.parts[index];
        let vdaf = part_vdaf(&self.job, part);
        let mut sum = vdaf.aggregate_init();
        let mut rows = Vec::new();
        for slice in slices {
            if step == Step::Verify2 {
                vdaf.merge_encoded(&mut sum, &slice.accepted_sum)
                    .map_err(Error::vdaf(format!("{}: sum of slice", part.name)))?;
            }
            rows.extend(slice.rows);
        }
        count_rows(
            self.row_counts.borrow_mut().entry(step).or_default(),
            part,
            &rows,
        );
        if step == self.last_step {
            self.job.progress.advance(1, rows.len() as u64);
        }
        Ok(PartWrite {
            step,
            part: part.clone(),
            rows,
            accepted_sum: (step == Step::Verify2).then(|| vdaf.encode_aggregate(&sum)),
        })
    }
}

/// A whole part's messages of a step, ready to write.
pub struct PartWrite {
    step: Step,
    part: StagedPart,
    rows: Vec<MessageRow>,
    /// verify2's sum of the output shares this server accepted.
    accepted_sum: Option<Vec<u8>>,
}

impl PartWrite {
    /// Sends the rows to the peer. verify2 also keeps the sum of the output
    /// shares this server accepted (not each share: the peer almost always
    /// agrees, and `aggregate` recomputes the sum where it does not).
    pub fn write(self, buckets: &ServerBuckets) -> Result<(), Error> {
        buckets.send_rows(self.step, &self.part, &self.rows)?;
        if let Some(sum) = self.accepted_sum {
            buckets.keep_accepted_sum(&self.part, sum)?;
        }
        Ok(())
    }
}
