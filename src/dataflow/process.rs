//! The two-server pipeline, run by each server on its own: `verify1 ->
//! verify2 -> aggregate -> publish`. Each step reads this server's data,
//! writes a message for the peer into the peer's inbox, and waits for the
//! peer's message of the step before it.
//!
//! Work is split by staged part (all parts in order, `index % peers`), so a
//! worker holds one part at a time. Each step keeps what the next one needs
//! (verification states, then output shares) in the private bucket, part by
//! part, so memory stays bounded by a part. A step whose `_SUCCESS` exists is
//! not redone, so a killed server can simply be started again. What goes to
//! the peer is written once ([`Location::put_once`]): a rerun rewrites the
//! same bytes, and can never change a message the peer may have read.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use timely::dataflow::channels::pact::Exchange as ExchangePact;
use timely::dataflow::operators::Input;
use timely::dataflow::{InputHandleVec, ProbeHandle};
use timely::worker::Worker;

use super::{all_reduce, bump, consume_into, fatal, Counters};
use crate::storage::location::Location;
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
    for &step in &job.steps {
        if step != Step::Publish && job.own(step).exists(SUCCESS).unwrap_or_else(|e| fatal(e)) {
            tracing::info!("{}: already done, skipping", step.name());
            continue;
        }
        match step {
            Step::Verify1 => message_step(worker, job, &parts, step, verify1_part),
            Step::Verify2 => {
                wait_for_peer(job, Step::Verify1);
                message_step(worker, job, &parts, step, verify2_part)
            }
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
        Err(crate::storage::location::StorageError::NotFound { .. }) => HashMap::new(),
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

/// A report after `verify_init`: its state and verifier share, or why not.
type Initialized = Result<(VerifyState, Vec<u8>), &'static str>;

/// Opens and verify-inits every row of a part; duplicates of an id are rejected.
fn init_rows(job: &ServerJob, vdaf: &Vdaf, part: &Part) -> Vec<(String, Initialized)> {
    let mut seen = HashSet::new();
    read_staged(job, part)
        .into_iter()
        .map(|row| {
            let result = if seen.insert(row.id.clone()) {
                open_and_verify_init(vdaf, &job.secrets, &part.batch_id, &row.payload)
                    .map_err(|r| r.reason())
            } else {
                Err("duplicate_report_id")
            };
            (row.id, result)
        })
        .collect()
}

/// What a step writes for one part: the rows for the peer, and this
/// server's own rows, which also keep its secrets for the next step.
struct PartMessages {
    sent: Vec<MessageRow>,
    own: Vec<MessageRow>,
    /// verify2: the sum of the output shares of the reports this server accepted.
    accepted_sum: Option<Vec<u8>>,
}

impl PartMessages {
    fn new() -> PartMessages {
        PartMessages {
            sent: Vec::new(),
            own: Vec::new(),
            accepted_sum: None,
        }
    }

    fn push(&mut self, id: &str, status: &str, own_share: Vec<u8>, sent_share: Vec<u8>) {
        self.sent.push(MessageRow {
            id: id.to_string(),
            status: status.to_string(),
            share: sent_share,
        });
        self.own.push(MessageRow {
            id: id.to_string(),
            status: status.to_string(),
            share: own_share,
        });
    }
}

/// verify1: verifier shares for the peer; this server keeps its verification states.
fn verify1_part(job: &ServerJob, vdaf: &Vdaf, part: &Part) -> PartMessages {
    let mut out = PartMessages::new();
    for (id, result) in init_rows(job, vdaf, part) {
        match result {
            Ok((state, share)) => out.push(&id, OK, vdaf.encode_state(&state), share),
            Err(reason) => out.push(&id, reason, Vec::new(), Vec::new()),
        }
    }
    out
}

/// Finishes verification of a part from this server's verify1 states and
/// the peer's verifier shares: every report's verdict, and the sum of the
/// output shares of the accepted reports that `include` admits.
fn finish_part(
    job: &ServerJob,
    vdaf: &Vdaf,
    part: &Part,
    include: impl Fn(&str) -> bool,
) -> (Vec<(String, String)>, AggregateShare) {
    let peer = read_received(job, Step::Verify1, part);
    let mut sum = vdaf.aggregate_init();
    let mut verdicts = Vec::new();
    for own in read_own(job, Step::Verify1, part) {
        let verdict = if own.status != OK {
            Err(own.status.as_str())
        } else {
            match peer.get(&own.id) {
                None => Err("missing_on_peer"),
                Some(p) if p.status != OK => Err("peer_rejected"),
                Some(p) => {
                    let state = vdaf
                        .decode_state(job.role(), &own.share)
                        .unwrap_or_else(|e| {
                            fatal(format!(
                                "{}: stored verification state of {}: {e}",
                                job.own(Step::Verify1).url(),
                                own.id
                            ))
                        });
                    vdaf.verify_finish(&part.batch_id, job.role(), &state, &p.share)
                        .map_err(|r| r.reason())
                }
            }
        };
        let status = match verdict {
            Ok(output) => {
                if include(&own.id) {
                    vdaf.accumulate(&mut sum, &output);
                }
                OK
            }
            Err(reason) => reason,
        };
        verdicts.push((own.id.clone(), status.to_string()));
    }
    (verdicts, sum)
}

/// verify2: verdicts for the peer; this server keeps the sum of the output
/// shares it accepted (not each share: the peer almost always agrees, and
/// `aggregate` recomputes the sum in the rare part where it does not).
fn verify2_part(job: &ServerJob, vdaf: &Vdaf, part: &Part) -> PartMessages {
    let (verdicts, sum) = finish_part(job, vdaf, part, |_| true);
    let mut out = PartMessages::new();
    for (id, status) in verdicts {
        out.push(&id, &status, Vec::new(), Vec::new());
    }
    out.accepted_sum = Some(vdaf.encode_aggregate(&sum));
    out
}

/// Runs a step that turns each part into a message for the peer.
fn message_step(
    worker: &mut Worker,
    job: &ServerJob,
    parts: &[Part],
    step: Step,
    compute: fn(&ServerJob, &Vdaf, &Part) -> PartMessages,
) {
    let mut counters = Counters::new();
    for part in my_parts(worker, parts) {
        let vdaf = part_vdaf(job, part);
        let messages = compute(job, vdaf, part);
        for row in &messages.sent {
            bump(
                &mut counters,
                format!("{}/{}/{}", step.name(), part.batch_id, row.status),
                1,
            );
        }
        let name = part.message_name();
        job.sent(step)
            .put_once(&name, encode_message(&messages.sent).into())
            .unwrap_or_else(|e| fatal(e));
        job.own(step)
            .put(&name, encode_message(&messages.own))
            .unwrap_or_else(|e| fatal(e));
        if let Some(sum) = messages.accepted_sum {
            job.own(step)
                .put(&part.accepted_sum_name(), sum)
                .unwrap_or_else(|e| fatal(e));
        }
    }
    let totals = all_reduce(worker, &counters);
    if worker.index() == 0 {
        finish_step(
            job,
            step,
            &serde_json::to_vec_pretty(&totals).expect("JSON"),
        );
    }
}

/// Marks a step done: the peer's copy first, then this server's (the skip marker).
fn finish_step(job: &ServerJob, step: Step, summary: &[u8]) {
    let sent = job.sent(step);
    sent.put_once("_SUMMARY.json", Bytes::copy_from_slice(summary))
        .unwrap_or_else(|e| fatal(e));
    sent.put_once(SUCCESS, Bytes::new())
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
    let share = if only_here == 0 {
        job.own(Step::Verify2)
            .get(&part.accepted_sum_name())
            .unwrap_or_else(|e| fatal(e))
            .to_vec()
    } else {
        tracing::warn!(
            "{}: the peer did not accept {only_here} reports this server accepted; \
             summing the reports both accepted again",
            part.name
        );
        let (_, sum) = finish_part(job, vdaf, part, |id| both_accepted.contains(id));
        vdaf.encode_aggregate(&sum)
    };
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
    let mut input = InputHandleVec::<u64, PartAggregate>::new();
    let probe = ProbeHandle::<u64>::new();
    let gathered = Rc::new(RefCell::new(Vec::new()));
    let sink = gathered.clone();
    worker.dataflow::<u64, _, _>(|scope| {
        let to_first = ExchangePact::new(|_: &PartAggregate| 0);
        consume_into(
            scope.input_from(&mut input),
            to_first,
            "GatherAggregates",
            &probe,
            move |p| sink.borrow_mut().push(p),
        );
    });
    for part in my_parts(worker, parts) {
        let vdaf = part_vdaf(job, part);
        input.send(aggregate_part(job, vdaf, part));
        worker.step();
    }
    input.close();
    while !probe.done() {
        worker.step();
    }
    if worker.index() != 0 {
        return;
    }
    let mut by_batch: BTreeMap<String, Vec<PartAggregate>> = BTreeMap::new();
    for p in gathered.take() {
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
            .put_once(&name, Bytes::from(bytes.clone()))
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
        Err(crate::storage::location::StorageError::NotFound { .. }) => Ok(None),
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
