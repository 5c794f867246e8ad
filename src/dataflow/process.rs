//! The two-server pipeline, run by each server on its own: `verify1 ->
//! verify2 -> aggregate -> publish`. Each step reads this server's data,
//! writes a message for the peer into the peer's inbox, and waits for the
//! peer's message of the step before it.
//!
//! Verification is split below the staged part: each part's owner (part
//! `index % peers`) reads it and sends one slice of rows to every worker,
//! every worker verifies its slices, and the owner writes the part's
//! messages once every slice is back. All workers share every part, so the
//! speedup does not depend on how many parts `stage` wrote. Parts are read
//! a round (one part per worker) ahead of the slowest worker, so memory is
//! bounded by a few parts, not by the batch. When `process` runs verify1 and
//! verify2 together, a slice whose part the peer has already answered is
//! finished at once with its verification states in memory; other slices'
//! states are kept in the private bucket until the peer answers (and are
//! recomputed from the raw shares if a stopped run held them only in memory,
//! or a rerun cuts parts into other slices). verify2 keeps one sum of
//! accepted output shares per part for `aggregate`.
//! A step whose `_SUCCESS` exists is not redone, so a killed server can
//! simply be started again. What goes to the peer is written once
//! ([`Location::put_once`]): a rerun rewrites the same content, and can
//! never change a message the peer may have read.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ops::Range;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use timely::worker::Worker;

use super::{all_reduce, bump, fatal, Channel, Counters};
use crate::storage::location::{Location, StorageError};
use crate::storage::messages::{
    decode_message, decode_staged, encode_message, MessageRow, StagedRow, OK,
};
use crate::storage::published::encode_published;
use crate::storage::staged::{StagedFormat, SUCCESS};
use crate::wire::config::BatchConfig;
use crate::wire::server::{open_and_verify_init, ServerSecrets};
use crate::wire::vdaf::{AggregateShare, Vdaf, VerifyState};
use crate::wire::Role;

/// The pipeline's steps, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Step {
    Verify1,
    Verify2,
    Aggregate,
    Publish,
}

impl Step {
    pub const ALL: [Step; 4] = [Step::Verify1, Step::Verify2, Step::Aggregate, Step::Publish];

    pub fn name(self) -> &'static str {
        match self {
            Step::Verify1 => "verify1",
            Step::Verify2 => "verify2",
            Step::Aggregate => "aggregate",
            Step::Publish => "publish",
        }
    }
}

/// How long to wait for the peer: `delay * exponent^attempt`, `limit` attempts.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub limit: u32,
    pub delay: Duration,
    pub exponent: f64,
}

/// One server's run of the pipeline for one date.
pub struct ServerJob {
    pub secrets: ServerSecrets,
    pub config: BatchConfig,
    pub date: String,
    /// `BUCKET_INTERNAL_PRIVATE`: this server's own data.
    pub private: Location,
    /// `BUCKET_INTERNAL_SHARED`: the peer writes here.
    pub inbox: Location,
    /// `BUCKET_EXTERNAL_SHARED`: the peer's inbox.
    pub outbox: Location,
    pub retry: Retry,
    pub steps: Vec<Step>,
}

impl ServerJob {
    fn role(&self) -> Role {
        self.secrets.role
    }
    fn raw(&self) -> Location {
        self.private.child(&format!("{}/raw", self.date))
    }
    /// This server's copy of what it produced in `step`.
    fn own(&self, step: Step) -> Location {
        self.private.child(&format!(
            "{}/intermediate/internal/{}",
            self.date,
            step.name()
        ))
    }
    /// Where the peer finds what this server produced in `step`.
    fn sent(&self, step: Step) -> Location {
        self.outbox.child(&format!(
            "{}/intermediate/external/{}",
            self.date,
            step.name()
        ))
    }
    /// What the peer produced in `step`.
    fn received(&self, step: Step) -> Location {
        self.inbox.child(&format!(
            "{}/intermediate/external/{}",
            self.date,
            step.name()
        ))
    }
    fn processed(&self) -> Location {
        self.private.child(&format!("{}/processed", self.date))
    }
}

/// A staged part this server processes: `batch_id=X/part-NNNNN.ext`.
#[derive(Debug, Clone)]
struct Part {
    batch_id: String,
    name: String,
    format: StagedFormat,
}

impl Part {
    /// `batch_id=X/part-NNNNN`, without the extension.
    fn stem(&self) -> &str {
        self.name
            .rsplit_once('.')
            .map_or(self.name.as_str(), |(s, _)| s)
    }

    /// The message file for this part: same name, always Parquet.
    fn message_name(&self) -> String {
        format!("{}.parquet", self.stem())
    }

    /// verify1's stored verification states for rows `range` of the part.
    fn states_name(&self, range: Range<usize>) -> String {
        format!("{}.rows-{}-{}.parquet", self.stem(), range.start, range.end)
    }

    /// verify2's sum of the output shares this server accepted in the part.
    fn accepted_sum_name(&self) -> String {
        format!("{}.accepted-sum", self.stem())
    }
}

/// What a server reports about one batch once the pipeline has run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct BatchOutcome {
    pub batch_id: String,
    pub vdaf: String,
    pub reports_total: u64,
    pub reports_aggregated: u64,
    pub rejected: BTreeMap<String, u64>,
    /// `published`, `withheld` (below min_batch_size) or `refused` (the servers disagree).
    pub status: String,
    pub aggregate: Option<Vec<u128>>,
    pub message: Option<String>,
}

/// The aggregate message: one server's share of a batch, with what it covers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct AggregateMessage {
    batch_id: String,
    vdaf: String,
    reports_total: u64,
    reports_aggregated: u64,
    /// SHA-256 over the parts' digests of aggregated report ids, in part order.
    digest: String,
    /// The encoded aggregate share, base64.
    share: String,
    rejected: BTreeMap<String, u64>,
}

/// One part's contribution to a batch's aggregate, sent to worker 0.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PartAggregate {
    batch_id: String,
    part: String,
    reports: u64,
    aggregated: u64,
    digest: [u8; 32],
    #[serde(with = "serde_bytes")]
    share: Vec<u8>,
    rejected: Vec<(String, u64)>,
}

/// Runs the job's steps on a timely cluster; returns the published outcomes (process 0).
pub fn run(job: ServerJob, config: timely::Config) -> Result<Vec<BatchOutcome>, String> {
    super::execute(job, config, server_worker)
}

fn server_worker(worker: &mut Worker, job: &ServerJob) -> Vec<BatchOutcome> {
    let mut outcomes = Vec::new();
    let parts = list_parts(job);
    let done = |step: Step| {
        step != Step::Publish && job.own(step).exists(SUCCESS).unwrap_or_else(|e| fatal(e))
    };
    let mut steps = job.steps.iter().copied().peekable();
    while let Some(step) = steps.next() {
        if done(step) {
            tracing::info!("{}: already done, skipping", step.name());
            continue;
        }
        match step {
            Step::Verify1 => {
                let then_verify2 = steps.peek() == Some(&Step::Verify2) && !done(Step::Verify2);
                verify_steps(worker, job, &parts, true, then_verify2);
                if then_verify2 {
                    steps.next();
                }
            }
            Step::Verify2 => verify_steps(worker, job, &parts, false, true),
            Step::Aggregate => {
                wait_for_peer(job, Step::Verify2);
                aggregate_step(worker, job, &parts)
            }
            Step::Publish => {
                // Publishing is per batch and cheap: worker 0 does it.
                if worker.index() == 0 {
                    wait_for_peer(job, Step::Aggregate);
                    outcomes = publish(job).unwrap_or_else(|e| fatal(e));
                }
            }
        }
    }
    outcomes
}

/// Lists this server's staged parts, sorted, skipping batch ids not in the config.
fn list_parts(job: &ServerJob) -> Vec<Part> {
    let raw = job.raw();
    if !raw.exists(SUCCESS).unwrap_or_else(|e| fatal(e)) {
        fatal(format!(
            "{}/{SUCCESS} is missing: stage this date into the server's private bucket first (stage --output-a/--output-b)",
            raw.url()
        ));
    }
    let mut unknown = std::collections::BTreeSet::new();
    let parts: Vec<Part> = raw
        .list()
        .unwrap_or_else(|e| fatal(e))
        .into_iter()
        .filter_map(|(name, _)| {
            let (dir, file) = name.split_once('/')?;
            let batch_id = dir.strip_prefix("batch_id=")?;
            let format = StagedFormat::of_extension(file.rsplit('.').next()?)?;
            if job.config.get(batch_id).is_none() {
                unknown.insert(batch_id.to_string());
                return None;
            }
            Some(Part {
                batch_id: batch_id.to_string(),
                name,
                format,
            })
        })
        .collect();
    for batch in unknown {
        tracing::warn!("batch id {batch:?} is not in the batch config: skipped, not published");
    }
    parts
}

/// Polls for the peer's `_SUCCESS` of `step` with exponential backoff.
fn wait_for_peer(job: &ServerJob, step: Step) {
    let inbox = job.received(step);
    let mut delay = job.retry.delay;
    for attempt in 0..=job.retry.limit {
        if inbox.exists(SUCCESS).unwrap_or_else(|e| fatal(e)) {
            return;
        }
        if attempt == job.retry.limit {
            break;
        }
        tracing::info!(
            "waiting {:.1}s for the peer's {} ({}/{})",
            delay.as_secs_f64(),
            step.name(),
            attempt + 1,
            job.retry.limit
        );
        std::thread::sleep(delay);
        delay = delay.mul_f64(job.retry.exponent.max(1.0));
    }
    fatal(format!(
        "the peer's {} never arrived: {}/{SUCCESS} is still missing after {} retries; \
         check that the other server is running this date and writes to this server's inbox \
         (raise RETRY_LIMIT / RETRY_DELAY to wait longer)",
        step.name(),
        inbox.url(),
        job.retry.limit
    ));
}

fn part_vdaf<'a>(job: &'a ServerJob, part: &Part) -> &'a Vdaf {
    &job.config
        .get(&part.batch_id)
        .expect("listed parts are configured")
        .vdaf
}

/// The parts this worker handles: every `peers`-th in sorted order.
fn my_parts<'a>(worker: &Worker, parts: &'a [Part]) -> impl Iterator<Item = &'a Part> {
    let (index, peers) = (worker.index(), worker.peers());
    parts
        .iter()
        .enumerate()
        .filter(move |(i, _)| i % peers == index)
        .map(|(_, p)| p)
}

fn read_staged(job: &ServerJob, part: &Part) -> Vec<StagedRow> {
    let data = job.raw().get(&part.name).unwrap_or_else(|e| fatal(e));
    decode_staged(
        &format!("{}/{}", job.raw().url(), part.name),
        part.format,
        data,
    )
    .unwrap_or_else(|e| fatal(e))
}

/// The peer's message for a part; a part the peer does not have is empty.
fn read_received(job: &ServerJob, step: Step, part: &Part) -> HashMap<String, MessageRow> {
    let inbox = job.received(step);
    let name = part.message_name();
    match inbox.get(&name) {
        Ok(data) => by_id(
            decode_message(&format!("{}/{name}", inbox.url()), data).unwrap_or_else(|e| fatal(e)),
        ),
        Err(StorageError::NotFound { .. }) => HashMap::new(),
        Err(e) => fatal(e),
    }
}

/// This server's own rows of `step` for a part, in order.
fn read_own(job: &ServerJob, step: Step, part: &Part) -> Vec<MessageRow> {
    let own = job.own(step);
    let name = part.message_name();
    let data = own.get(&name).unwrap_or_else(|e| fatal(e));
    decode_message(&format!("{}/{name}", own.url()), data).unwrap_or_else(|e| fatal(e))
}

/// Message rows by report id. A repeated id keeps its first row, as
/// verification does: the repeats are the ones rejected as duplicates.
fn by_id(rows: Vec<MessageRow>) -> HashMap<String, MessageRow> {
    let mut map = HashMap::with_capacity(rows.len());
    for row in rows {
        map.entry(row.id.clone()).or_insert(row);
    }
    map
}

/// A part's reports after `verify_init`, in row order: each one's
/// verification state, or the reason it has none.
type States = Vec<(String, Result<VerifyState, String>)>;

/// A report as the worker verifying it gets it. `repeated` marks a report id
/// seen earlier in the same part: that copy is rejected as a duplicate.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ReportRow {
    id: String,
    #[serde(with = "serde_bytes")]
    payload: Vec<u8>,
    repeated: bool,
}

/// Rows `start..end` of part `part` (an index into the sorted parts), slice
/// `index` of `of`: the unit of verification work. Every part is cut into
/// one slice per worker, so all workers share each part and the speedup
/// does not depend on how many parts `stage` wrote.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Slice {
    part: usize,
    index: usize,
    of: usize,
    start: usize,
    end: usize,
}

impl Slice {
    fn rows(&self) -> Range<usize> {
        self.start..self.end
    }
}

/// A slice's reports, from the part's owner to the worker verifying them.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SliceReports {
    slice: Slice,
    rows: Vec<ReportRow>,
}

/// A slice's message rows, back to the part's owner, which writes the part
/// once every slice is in. verify2 adds the encoded sum of the output
/// shares this server accepted in the slice.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SliceMessage {
    slice: Slice,
    rows: Vec<MessageRow>,
    #[serde(with = "serde_bytes")]
    accepted_sum: Vec<u8>,
}

/// The worker that reads part `index` and writes its messages.
fn owner(index: usize, peers: usize) -> u64 {
    (index % peers) as u64
}

/// A part's reports in row order, repeats of a report id marked.
fn report_rows(rows: Vec<StagedRow>) -> Vec<ReportRow> {
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
fn read_slice(job: &ServerJob, part: &Part, range: Range<usize>) -> Vec<ReportRow> {
    let mut rows = report_rows(read_staged(job, part));
    rows.truncate(range.end);
    rows.split_off(range.start.min(rows.len()))
}

/// Reads part `index` and sends one slice of it to every worker.
fn scatter(
    job: &ServerJob,
    parts: &[Part],
    index: usize,
    peers: usize,
    to: &mut Channel<SliceReports>,
) {
    let mut rows = report_rows(read_staged(job, &parts[index]));
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
}

/// verify1 for a slice: opens and verify-inits every report. Returns the
/// rows for the peer and this server's states.
fn verify1_slice(
    job: &ServerJob,
    vdaf: &Vdaf,
    batch_id: &str,
    rows: Vec<ReportRow>,
) -> (Vec<MessageRow>, States) {
    let mut sent = Vec::with_capacity(rows.len());
    let mut states = Vec::with_capacity(rows.len());
    for row in rows {
        let result = if row.repeated {
            Err("duplicate_report_id")
        } else {
            open_and_verify_init(vdaf, &job.secrets, batch_id, &row.payload).map_err(|r| r.reason())
        };
        let (status, share, state) = match result {
            Ok((state, share)) => (OK, share, Ok(state)),
            Err(reason) => (reason, Vec::new(), Err(reason.to_string())),
        };
        sent.push(MessageRow {
            id: row.id.clone(),
            status: status.to_string(),
            share,
        });
        states.push((row.id, state));
    }
    (sent, states)
}

/// Keeps a slice's states in the private bucket until verify2 needs them.
fn store_states(job: &ServerJob, vdaf: &Vdaf, part: &Part, range: Range<usize>, states: &States) {
    if range.is_empty() {
        return;
    }
    let rows: Vec<MessageRow> = states
        .iter()
        .map(|(id, state)| MessageRow {
            id: id.clone(),
            status: state.as_ref().err().map_or(OK, String::as_str).to_string(),
            share: state.as_ref().map_or(Vec::new(), |s| vdaf.encode_state(s)),
        })
        .collect();
    job.own(Step::Verify1)
        .put(&part.states_name(range), encode_message(&rows))
        .unwrap_or_else(|e| fatal(e));
}

/// The states of rows `range` of a part: as verify1 stored them, or, where
/// it stored none for exactly these rows (a run that held them in memory
/// and stopped, or one cut into other slices), recomputed from `rows`
/// (verification is deterministic, so they are the same states).
fn load_states(
    job: &ServerJob,
    vdaf: &Vdaf,
    part: &Part,
    range: Range<usize>,
    rows: impl FnOnce() -> Vec<ReportRow>,
) -> States {
    if range.is_empty() {
        return States::new();
    }
    let own = job.own(Step::Verify1);
    let name = part.states_name(range);
    let data = match own.get(&name) {
        Ok(data) => data,
        Err(StorageError::NotFound { .. }) => {
            return verify1_slice(job, vdaf, &part.batch_id, rows()).1
        }
        Err(e) => fatal(e),
    };
    let rows = decode_message(&format!("{}/{name}", own.url()), data).unwrap_or_else(|e| fatal(e));
    rows.into_iter()
        .map(|row| {
            let state = if row.status == OK {
                Ok(vdaf
                    .decode_state(job.role(), &row.share)
                    .unwrap_or_else(|e| {
                        fatal(format!(
                            "{}/{name}: verification state of {}: {e}",
                            own.url(),
                            row.id
                        ))
                    }))
            } else {
                Err(row.status)
            };
            (row.id, state)
        })
        .collect()
}

/// Finishes verification of reports of a part from this server's states and
/// the peer's verifier shares: every report's verdict, and the sum of the
/// output shares of the accepted reports that `include` admits.
fn finish_states(
    job: &ServerJob,
    vdaf: &Vdaf,
    part: &Part,
    states: States,
    include: impl Fn(&str) -> bool,
) -> (Vec<MessageRow>, AggregateShare) {
    let peer = read_received(job, Step::Verify1, part);
    let mut sum = vdaf.aggregate_init();
    let mut verdicts = Vec::with_capacity(states.len());
    for (id, state) in states {
        let verdict = match (&state, peer.get(&id)) {
            (Err(reason), _) => Err(reason.as_str()),
            (Ok(_), None) => Err("missing_on_peer"),
            (Ok(_), Some(p)) if p.status != OK => Err("peer_rejected"),
            (Ok(state), Some(p)) => vdaf
                .verify_finish(&part.batch_id, job.role(), state, &p.share)
                .map_err(|r| r.reason()),
        };
        let status = match verdict {
            Ok(output) => {
                if include(&id) {
                    vdaf.accumulate(&mut sum, &output);
                }
                OK
            }
            Err(reason) => reason,
        };
        verdicts.push(MessageRow {
            id,
            status: status.to_string(),
            share: Vec::new(),
        });
    }
    (verdicts, sum)
}

fn count_rows(counters: &mut Counters, step: Step, part: &Part, rows: &[MessageRow]) {
    for row in rows {
        bump(
            counters,
            format!("{}/{}/{}", step.name(), part.batch_id, row.status),
            1,
        );
    }
}

/// Sums the workers' counters of a step; worker 0 marks it done.
fn close_step(worker: &mut Worker, job: &ServerJob, step: Step, counters: &Counters) {
    let totals = all_reduce(worker, counters);
    if worker.index() == 0 {
        finish_step(
            job,
            step,
            &serde_json::to_vec_pretty(&totals).expect("JSON"),
        );
    }
}

/// A part owner's side of verification: collects the slices each worker
/// sends back and writes a part's messages once all its slices are in.
struct PartWriter<'a> {
    job: &'a ServerJob,
    parts: &'a [Part],
    verify1: Channel<SliceMessage>,
    verify2: Channel<SliceMessage>,
    pending: [HashMap<usize, Vec<SliceMessage>>; 2],
    /// verify2's verdicts counted on this worker, by slice it finished.
    verify2_counts: Counters,
}

impl<'a> PartWriter<'a> {
    fn new(worker: &mut Worker, job: &'a ServerJob, parts: &'a [Part]) -> Self {
        let peers = worker.peers();
        let route = move |m: &SliceMessage| owner(m.slice.part, peers);
        PartWriter {
            job,
            parts,
            verify1: Channel::new(worker, "GatherVerify1", route),
            verify2: Channel::new(worker, "GatherVerify2", route),
            pending: [HashMap::new(), HashMap::new()],
            verify2_counts: Counters::new(),
        }
    }

    /// verify2 for a slice whose states are at hand: its verdicts and sum go
    /// to the part's owner.
    fn verify2_slice(&mut self, slice: Slice, states: States) {
        let part = &self.parts[slice.part];
        let vdaf = part_vdaf(self.job, part);
        let (rows, sum) = finish_states(self.job, vdaf, part, states, |_| true);
        count_rows(&mut self.verify2_counts, Step::Verify2, part, &rows);
        self.verify2.send(SliceMessage {
            slice,
            rows,
            accepted_sum: vdaf.encode_aggregate(&sum),
        });
    }

    /// Writes every part that became whole; returns whether any slice came in.
    fn write_whole_parts(&mut self) -> bool {
        let mut any = false;
        for (k, channel) in [&self.verify1, &self.verify2].into_iter().enumerate() {
            while let Some(message) = channel.take() {
                any = true;
                let (index, of) = (message.slice.part, message.slice.of);
                let slices = self.pending[k].entry(index).or_default();
                slices.push(message);
                if slices.len() == of {
                    let mut slices = self.pending[k].remove(&index).expect("present");
                    slices.sort_by_key(|m| m.slice.index);
                    let part = &self.parts[index];
                    if k == 0 {
                        write_verify1(self.job, part, slices);
                    } else {
                        write_verify2(self.job, part, slices);
                    }
                }
            }
        }
        any
    }

    /// Closes this worker's side of `step`'s channel and writes parts until
    /// every worker's slices of that step are written.
    fn finish(&mut self, worker: &mut Worker, step: Step) {
        let channel = if step == Step::Verify1 {
            &mut self.verify1
        } else {
            &mut self.verify2
        };
        channel.close();
        loop {
            let delivered = match step {
                Step::Verify1 => self.verify1.delivered(),
                _ => self.verify2.delivered(),
            };
            // What arrived before the check is all there is once delivered.
            self.write_whole_parts();
            if delivered {
                return;
            }
            worker.step_or_park(None);
        }
    }
}

fn write_verify1(job: &ServerJob, part: &Part, slices: Vec<SliceMessage>) {
    let rows: Vec<MessageRow> = slices.into_iter().flat_map(|s| s.rows).collect();
    job.sent(Step::Verify1)
        .put_once(
            &part.message_name(),
            encode_message(&rows).into(),
            same_rows,
        )
        .unwrap_or_else(|e| fatal(e));
}

/// Sends the part's verdicts, and keeps them with the sum of the output
/// shares this server accepted (not each share: the peer almost always
/// agrees, and `aggregate` recomputes the sum where it does not).
fn write_verify2(job: &ServerJob, part: &Part, slices: Vec<SliceMessage>) {
    let vdaf = part_vdaf(job, part);
    let mut sum = vdaf.aggregate_init();
    let mut rows = Vec::new();
    for slice in slices {
        let share = vdaf
            .decode_aggregate(&slice.accepted_sum)
            .unwrap_or_else(|e| fatal(format!("{}: sum of slice: {e}", part.name)));
        vdaf.merge(&mut sum, &share);
        rows.extend(slice.rows);
    }
    let name = part.message_name();
    let bytes = encode_message(&rows);
    job.sent(Step::Verify2)
        .put_once(&name, Bytes::from(bytes.clone()), same_rows)
        .unwrap_or_else(|e| fatal(e));
    let own = job.own(Step::Verify2);
    own.put(&name, bytes).unwrap_or_else(|e| fatal(e));
    own.put(&part.accepted_sum_name(), vdaf.encode_aggregate(&sum))
        .unwrap_or_else(|e| fatal(e));
}

/// verify1 and/or verify2 over all parts. Each part's owner reads it and
/// sends one slice to every worker; every worker verifies the slices it
/// gets and sends its rows back; the owner writes the part's messages.
/// Owners read parts in rounds, at most one round ahead of what they have
/// taken themselves, so every worker holds a few parts' worth of slices at most.
///
/// When both steps run, a slice whose part the peer has already answered
/// goes through verify2 straight away with its states in memory; at most
/// one other slice's states wait in memory, older ones are stored. verify1
/// alone stores every slice's states; verify2 alone loads them.
fn verify_steps(
    worker: &mut Worker,
    job: &ServerJob,
    parts: &[Part],
    verify1: bool,
    verify2: bool,
) {
    if !verify1 {
        let own = job.own(Step::Verify1);
        if !own.exists(SUCCESS).unwrap_or_else(|e| fatal(e)) {
            fatal(format!(
                "{}/{SUCCESS} is missing: run verify1 for this date first",
                own.url()
            ));
        }
        wait_for_peer(job, Step::Verify1);
    }
    let peers = worker.peers();
    let mut reports = Channel::new(worker, "ScatterSlices", |s: &SliceReports| {
        s.slice.index as u64
    });
    let mut writer = PartWriter::new(worker, job, parts);
    let mut verify1_counts = Counters::new();
    let mut waiting: VecDeque<(Slice, States)> = VecDeque::new();
    let mut stored: Vec<Slice> = Vec::new();
    // Parts are read in rounds of one per worker (part `round * peers + worker`).
    // A worker reads its part of round r once it has taken every slice of the
    // rounds before r - 1: one round ahead, so nobody waits for work, and a
    // worker behind the others has at most a few rounds of slices queued.
    let rounds = parts.len().div_ceil(peers);
    let in_round = |round: usize| peers.min(parts.len() - round * peers);
    let mut taken = vec![0; rounds];
    let (mut next_round, mut complete) = (0, 0);
    loop {
        let mut busy = writer.write_whole_parts();
        if next_round < rounds && next_round <= complete + 1 {
            busy = true;
            let index = next_round * peers + worker.index();
            next_round += 1;
            if index < parts.len() {
                scatter(job, parts, index, peers, &mut reports);
            }
        } else if let Some(SliceReports { slice, rows }) = reports.take() {
            taken[slice.part / peers] += 1;
            while complete < rounds && taken[complete] == in_round(complete) {
                complete += 1;
            }
            busy = true;
            let part = &parts[slice.part];
            let vdaf = part_vdaf(job, part);
            if !verify1 {
                let states = load_states(job, vdaf, part, slice.rows(), || rows);
                writer.verify2_slice(slice, states);
            } else {
                let (sent, states) = verify1_slice(job, vdaf, &part.batch_id, rows);
                count_rows(&mut verify1_counts, Step::Verify1, part, &sent);
                writer.verify1.send(SliceMessage {
                    slice,
                    rows: sent,
                    accepted_sum: Vec::new(),
                });
                if !verify2 {
                    store_states(job, vdaf, part, slice.rows(), &states);
                } else {
                    waiting.push_back((slice, states));
                }
            }
            while let Some((oldest, _)) = waiting.front() {
                let answered = job
                    .received(Step::Verify1)
                    .exists(&parts[oldest.part].message_name())
                    .unwrap_or_else(|e| fatal(e));
                if !answered && waiting.len() == 1 {
                    break;
                }
                let (oldest, states) = waiting.pop_front().expect("not empty");
                if answered {
                    writer.verify2_slice(oldest, states);
                } else {
                    let part = &parts[oldest.part];
                    store_states(job, part_vdaf(job, part), part, oldest.rows(), &states);
                    stored.push(oldest);
                }
            }
        } else if next_round == rounds && !reports.is_closed() {
            reports.close();
        } else if reports.is_closed() && reports.delivered() {
            break;
        }
        if busy {
            worker.step();
        } else {
            worker.step_or_park(None);
        }
    }
    if verify1 {
        writer.finish(worker, Step::Verify1);
        close_step(worker, job, Step::Verify1, &verify1_counts);
    }
    if !verify2 {
        return;
    }
    if verify1 {
        wait_for_peer(job, Step::Verify1);
        // The waiting slice first, then the stored ones; owners write each
        // part as its slices come in, so nothing piles up.
        let rest = waiting
            .into_iter()
            .map(|(slice, states)| (slice, Some(states)))
            .chain(stored.into_iter().map(|slice| (slice, None)));
        for (slice, states) in rest {
            let part = &parts[slice.part];
            let states = states.unwrap_or_else(|| {
                load_states(job, part_vdaf(job, part), part, slice.rows(), || {
                    read_slice(job, part, slice.rows())
                })
            });
            writer.verify2_slice(slice, states);
            writer.write_whole_parts();
            worker.step();
        }
    }
    writer.finish(worker, Step::Verify2);
    close_step(worker, job, Step::Verify2, &writer.verify2_counts);
}

/// Whether two message files hold the same rows, however they were encoded.
fn same_rows(a: &Bytes, b: &Bytes) -> bool {
    a == b
        || decode_message("", a.clone())
            .is_ok_and(|x| decode_message("", b.clone()).is_ok_and(|y| x == y))
}

/// Whether two JSON objects hold the same values, however they were formatted.
fn same_json(a: &Bytes, b: &Bytes) -> bool {
    let parse = |bytes: &Bytes| serde_json::from_slice::<serde_json::Value>(bytes).ok();
    a == b || parse(a).is_some_and(|x| Some(x) == parse(b))
}

/// Marks a step done: the peer's copy first, then this server's (the skip marker).
fn finish_step(job: &ServerJob, step: Step, summary: &[u8]) {
    let sent = job.sent(step);
    sent.put_once("_SUMMARY.json", Bytes::copy_from_slice(summary), same_json)
        .unwrap_or_else(|e| fatal(e));
    sent.put_once(SUCCESS, Bytes::new(), |a, b| a == b)
        .unwrap_or_else(|e| fatal(e));
    let own = job.own(step);
    own.put("_SUMMARY.json", summary.to_vec())
        .unwrap_or_else(|e| fatal(e));
    own.put(SUCCESS, Vec::new()).unwrap_or_else(|e| fatal(e));
    tracing::info!("{}: done", step.name());
}

/// aggregate: the sum of the output shares of reports both servers accepted.
fn aggregate_part(job: &ServerJob, vdaf: &Vdaf, part: &Part) -> PartAggregate {
    let peer_verdicts = read_received(job, Step::Verify2, part);
    let mut ids = Sha256::new();
    let mut both_accepted = HashSet::new();
    let (mut reports, mut only_here) = (0, 0);
    let mut rejected: BTreeMap<String, u64> = BTreeMap::new();
    for own in read_own(job, Step::Verify2, part) {
        reports += 1;
        let reason = match (
            own.status.as_str(),
            peer_verdicts.get(&own.id).map(|r| r.status.as_str()),
        ) {
            (OK, Some(OK)) => {
                ids.update(own.id.as_bytes());
                both_accepted.insert(own.id);
                continue;
            }
            (OK, Some(_)) => "peer_verdict_reject",
            (OK, None) => "missing_on_peer",
            (reason, _) => reason,
        };
        if own.status == OK {
            only_here += 1;
        }
        *rejected.entry(reason.to_string()).or_default() += 1;
    }
    let stored_sum = if only_here == 0 {
        match job.own(Step::Verify2).get(&part.accepted_sum_name()) {
            Ok(bytes) => Some(bytes.to_vec()),
            // A verify2 run that kept no sum: sum again below.
            Err(StorageError::NotFound { .. }) => None,
            Err(e) => fatal(e),
        }
    } else {
        tracing::warn!(
            "{}: the peer did not accept {only_here} reports this server accepted; \
             summing the reports both accepted again",
            part.name
        );
        None
    };
    let share = stored_sum.unwrap_or_else(|| {
        let states = load_states(job, vdaf, part, 0..reports as usize, || {
            report_rows(read_staged(job, part))
        });
        let (verdicts, sum) =
            finish_states(job, vdaf, part, states, |id| both_accepted.contains(id));
        let summed = verdicts
            .iter()
            .filter(|r| r.status == OK && both_accepted.contains(&r.id))
            .count();
        if summed != both_accepted.len() {
            fatal(format!(
                "{}: {summed} of the {} reports both servers accepted verify again; this \
                 server's stored data for the date changed since verify2. Reset both servers \
                 for this date (prio-processor cleanup) and rerun",
                part.name,
                both_accepted.len()
            ));
        }
        vdaf.encode_aggregate(&sum)
    });
    PartAggregate {
        batch_id: part.batch_id.clone(),
        part: part.name.clone(),
        reports,
        aggregated: both_accepted.len() as u64,
        digest: ids.finalize().into(),
        share,
        rejected: rejected.into_iter().collect(),
    }
}

fn aggregate_step(worker: &mut Worker, job: &ServerJob, parts: &[Part]) {
    let mut gathered = Channel::new(worker, "GatherAggregates", |_: &PartAggregate| 0);
    for part in my_parts(worker, parts) {
        let vdaf = part_vdaf(job, part);
        gathered.send(aggregate_part(job, vdaf, part));
        worker.step();
    }
    gathered.close();
    while !gathered.delivered() {
        worker.step_or_park(None);
    }
    if worker.index() != 0 {
        return;
    }
    let mut by_batch: BTreeMap<String, Vec<PartAggregate>> = BTreeMap::new();
    while let Some(p) = gathered.take() {
        by_batch.entry(p.batch_id.clone()).or_default().push(p);
    }
    // Every configured batch gets a message, an empty one when it has no reports.
    for (batch_id, _) in job.config.iter() {
        by_batch.entry(batch_id.to_string()).or_default();
    }
    for (batch_id, mut parts) in by_batch {
        parts.sort_by(|a, b| a.part.cmp(&b.part));
        let vdaf = &job.config.get(&batch_id).expect("configured").vdaf;
        let mut agg = vdaf.aggregate_init();
        let mut digest = Sha256::new();
        let mut rejected = BTreeMap::new();
        let (mut total, mut aggregated) = (0, 0);
        for p in &parts {
            let share = vdaf
                .decode_aggregate(&p.share)
                .unwrap_or_else(|e| fatal(format!("aggregate share of {}: {e}", p.part)));
            vdaf.merge(&mut agg, &share);
            digest.update(p.digest);
            total += p.reports;
            aggregated += p.aggregated;
            for (reason, n) in &p.rejected {
                *rejected.entry(reason.clone()).or_default() += n;
            }
        }
        let message = AggregateMessage {
            batch_id: batch_id.clone(),
            vdaf: vdaf.spec().name().into(),
            reports_total: total,
            reports_aggregated: aggregated,
            digest: hex::encode(digest.finalize()),
            share: base64::engine::general_purpose::STANDARD.encode(vdaf.encode_aggregate(&agg)),
            rejected,
        };
        let bytes = serde_json::to_vec_pretty(&message).expect("JSON");
        let name = format!("batch_id={batch_id}/aggregate.json");
        job.sent(Step::Aggregate)
            .put_once(&name, Bytes::from(bytes.clone()), same_json)
            .unwrap_or_else(|e| fatal(e));
        job.own(Step::Aggregate)
            .put(&name, bytes)
            .unwrap_or_else(|e| fatal(e));
    }
    finish_step(job, Step::Aggregate, b"{}");
}

fn read_aggregate(loc: &Location, batch_id: &str) -> Result<Option<AggregateMessage>, String> {
    let name = format!("batch_id={batch_id}/aggregate.json");
    match loc.get(&name) {
        Ok(data) => serde_json::from_slice(&data)
            .map(Some)
            .map_err(|e| format!("{}/{name}: malformed aggregate message: {e}", loc.url())),
        Err(StorageError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Compares both servers' aggregates, unshards, and writes `processed/`.
fn publish(job: &ServerJob) -> Result<Vec<BatchOutcome>, String> {
    let processed = job.processed();
    processed.delete(SUCCESS).map_err(|e| e.to_string())?;
    let mut outcomes = Vec::new();
    for (batch_id, spec) in job.config.iter() {
        let own = read_aggregate(&job.own(Step::Aggregate), batch_id)?;
        let peer = read_aggregate(&job.received(Step::Aggregate), batch_id)?;
        let mut outcome = BatchOutcome {
            batch_id: batch_id.to_string(),
            vdaf: spec.spec().name().into(),
            ..Default::default()
        };
        let (Some(own), Some(peer)) = (own, peer) else {
            outcome.status = "refused".into();
            outcome.message = Some("an aggregate message is missing for this batch".into());
            outcomes.push(outcome);
            continue;
        };
        outcome.reports_total = own.reports_total;
        outcome.reports_aggregated = own.reports_aggregated;
        outcome.rejected = own.rejected.clone();
        let name = format!("batch_id={batch_id}/aggregate.json");
        if own.reports_aggregated != peer.reports_aggregated || own.digest != peer.digest {
            outcome.status = "refused".into();
            outcome.message = Some(format!(
                "the servers aggregated different reports ({} with digest {} here, {} with digest {} at the peer)",
                own.reports_aggregated,
                &own.digest[..16],
                peer.reports_aggregated,
                &peer.digest[..16]
            ));
        } else if own.reports_aggregated < spec.min_batch_size {
            outcome.status = "withheld".into();
            outcome.message = Some(format!(
                "{} reports is below min_batch_size {}",
                own.reports_aggregated, spec.min_batch_size
            ));
        } else {
            let decode = |m: &AggregateMessage| -> Result<AggregateShare, String> {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(&m.share)
                    .map_err(|e| format!("aggregate share of {batch_id}: {e}"))?;
                spec.vdaf
                    .decode_aggregate(&bytes)
                    .map_err(|e| format!("aggregate share of {batch_id}: {e}"))
            };
            let (mine, theirs) = (decode(&own)?, decode(&peer)?);
            let (a, b) = match job.role() {
                Role::A => (&mine, &theirs),
                Role::B => (&theirs, &mine),
            };
            let result = spec
                .vdaf
                .unshard(a, b, own.reports_aggregated as usize)
                .map_err(|e| format!("unsharding {batch_id}: {e}"))?;
            outcome.status = "published".into();
            outcome.aggregate = Some(result);
            let json = serde_json::json!({
                "batch_id": batch_id,
                "vdaf": spec.spec().name(),
                "parameters": spec.spec(),
                "reports_total": own.reports_total,
                "reports_aggregated": own.reports_aggregated,
                "rejected": own.rejected,
                "aggregate": outcome.aggregate,
            });
            processed
                .put(&name, serde_json::to_vec_pretty(&json).expect("JSON"))
                .map_err(|e| e.to_string())?;
            processed
                .put(
                    &format!("batch_id={batch_id}/aggregate.parquet"),
                    encode_published(
                        batch_id,
                        spec.spec().name(),
                        own.reports_total,
                        own.reports_aggregated,
                        outcome.aggregate.as_deref().unwrap_or_default(),
                    ),
                )
                .map_err(|e| e.to_string())?;
        }
        if outcome.status != "published" {
            // A rerun must not leave an earlier result standing.
            processed
                .delete_all(&format!("batch_id={batch_id}"))
                .map_err(|e| e.to_string())?;
        }
        outcomes.push(outcome);
    }
    processed
        .put(
            "_SUMMARY.json",
            serde_json::to_vec_pretty(&outcomes).expect("JSON"),
        )
        .map_err(|e| e.to_string())?;
    processed
        .put(SUCCESS, Vec::new())
        .map_err(|e| e.to_string())?;
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_once_compares_content_not_encoding() {
        let rows = vec![MessageRow {
            id: "00ff".into(),
            status: OK.into(),
            share: vec![1, 2, 3],
        }];
        let ours = Bytes::from(encode_message(&rows));
        // The same rows as another version might have encoded them: other writer settings.
        let batch = crate::storage::parquet_bytes(
            &parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(ours.clone())
                .unwrap()
                .build()
                .unwrap()
                .next()
                .unwrap()
                .unwrap(),
            None,
        );
        let theirs = Bytes::from(batch);
        assert_ne!(ours, theirs);
        assert!(same_rows(&ours, &theirs));
        let mut changed = rows.clone();
        changed[0].status = "invalid_proof".into();
        assert!(!same_rows(&ours, &Bytes::from(encode_message(&changed))));
        assert!(!same_rows(&ours, &Bytes::from_static(b"not parquet")));

        assert!(same_json(
            &Bytes::from_static(b"{\"a\": 1, \"b\": [2]}"),
            &Bytes::from_static(b"{\n  \"b\": [2],\n  \"a\": 1\n}")
        ));
        assert!(!same_json(
            &Bytes::from_static(b"{\"a\": 1}"),
            &Bytes::from_static(b"{\"a\": 2}")
        ));
    }
}
