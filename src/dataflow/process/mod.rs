//! The two-server pipeline, run by each server on its own: `verify1 ->
//! verify2 -> aggregate -> publish`. Each step reads this server's data,
//! writes a message for the peer into the peer's inbox, and waits for the
//! peer's message of the step before it. Where each object lives is
//! [`ServerBuckets`]' business; this module decides what to compute.
//!
//! - [`slices`]: how verification work is spread: each part's owner reads
//!   it, sends one slice to every worker, and writes the part's messages
//!   once every slice is back;
//! - [`verify`]: verify1 and verify2 over those slices;
//! - [`aggregate`]: the sums of the reports both servers accepted, but for
//!   [`replay`]s;
//! - [`publish`]: both servers' sums checked against each other, unsharded
//!   and written.
//!
//! A step whose `_SUCCESS` exists is not redone, so a killed server can
//! simply be started again. What goes to the peer is written once: a rerun
//! rewrites the same content, and can never change a message the peer may
//! have read.

mod aggregate;
mod hello;
mod publish;
mod replay;
mod slices;
mod steps;
mod verify;

use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use timely::worker::Worker;

use super::{all_reduce, Cluster, Error, Progress};
use crate::storage::messages::{encode_step_summary, MessageRow};
use crate::storage::server::{ServerBuckets, StagedPart};
use crate::wire::config::BatchConfig;
use crate::wire::protocol::{AlarmRule, BatchOutcome, StatusCounts, Step};
use crate::wire::server::ServerSecrets;
use crate::wire::vdaf::Vdaf;

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
    pub buckets: ServerBuckets,
    pub retry: Retry,
    /// The steps asked for, in order; those already done are skipped.
    pub steps: Vec<Step>,
    /// Anti-replay looks this many dates back ([`replay`]).
    pub replay_window_days: u32,
    /// When `publish` raises an alarm on a batch.
    pub alarm: AlarmRule,
    /// Told of each pass and of the parts it finished, with their reports.
    pub progress: std::sync::Arc<dyn Progress>,
}

/// Which verification steps one pass over the parts does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verification {
    /// verify1 alone: every slice's states are stored for a later verify2.
    First,
    /// verify2 alone, from verify1's stored states.
    Second,
    /// Both in one pass: slices the peer has answered are finished in memory.
    Both,
}

impl Verification {
    fn verify1(self) -> bool {
        self != Verification::Second
    }

    fn verify2(self) -> bool {
        self != Verification::First
    }
}

/// One pass of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    Verify(Verification),
    Aggregate,
    Publish,
}

impl Pass {
    /// The steps it runs, as log lines name them.
    fn name(self) -> &'static str {
        match self {
            Pass::Verify(Verification::First) => "verify1",
            Pass::Verify(Verification::Second) => "verify2",
            Pass::Verify(Verification::Both) => "verify1+verify2",
            Pass::Aggregate => "aggregate",
            Pass::Publish => "publish",
        }
    }
}

/// What a run did, as worker 0 saw it.
#[derive(Debug, Default)]
pub struct RunReport {
    /// The published outcomes, when the steps include publish.
    pub outcomes: Vec<BatchOutcome>,
    /// Each pass run, by the steps it covered (`verify1+verify2`, ...), and
    /// how long it took, waits for the peer included; skipped steps are absent.
    pub passes: Vec<(&'static str, Duration)>,
}

/// Runs the job's steps on a timely cluster.
pub fn run(job: ServerJob, cluster: &Cluster) -> Result<RunReport, Error> {
    super::execute(job, cluster, server_worker)
}

fn server_worker(worker: &mut Worker, job: &Arc<ServerJob>) -> Result<RunReport, Error> {
    let _server = tracing::info_span!("server", id = %job.secrets.role).entered();
    let parts: Rc<[StagedPart]> = configured_parts(job)?.into();
    let mut agreed = hello::send(job)?;
    let mut report = RunReport::default();
    for pass in plan(job)? {
        let _pass = tracing::info_span!("pass", steps = %pass.name()).entered();
        let started = std::time::Instant::now();
        job.progress.phase(pass.name());
        if !agreed && pass != Pass::Verify(Verification::First) {
            hello::agree(job)?;
            agreed = true;
        }
        match pass {
            Pass::Verify(verification) => verify::run(worker, job, &parts, verification)?,
            Pass::Aggregate => {
                wait_for_peer(job, Step::Verify2)?;
                aggregate::run(worker, job, &parts)?;
            }
            // Publishing is per batch and cheap: worker 0 does it.
            Pass::Publish if worker.index() == 0 => {
                wait_for_peer(job, Step::Aggregate)?;
                report.outcomes = publish::run(job)?;
            }
            Pass::Publish => {}
        }
        // Each pass ends in an exchange that every worker's progress precedes.
        job.progress.phase_done(pass.name());
        report.passes.push((pass.name(), started.elapsed()));
    }
    Ok(report)
}

/// The passes for the steps asked for: steps already done are skipped
/// (publish is always redone), and verify1 and verify2 run as one pass.
fn plan(job: &ServerJob) -> Result<Vec<Pass>, Error> {
    let mut passes = Vec::new();
    for &step in &job.steps {
        if step != Step::Publish && job.buckets.step_marker(step)?.0 {
            tracing::info!("{step}: already done, skipping");
            continue;
        }
        let pass = match step {
            // Exchanged before every run, whatever the steps.
            Step::Hello => continue,
            Step::Verify1 => Pass::Verify(Verification::First),
            Step::Verify2 if passes.last() == Some(&Pass::Verify(Verification::First)) => {
                passes.pop();
                Pass::Verify(Verification::Both)
            }
            Step::Verify2 => Pass::Verify(Verification::Second),
            Step::Aggregate => Pass::Aggregate,
            Step::Publish => Pass::Publish,
        };
        passes.push(pass);
    }
    Ok(passes)
}

/// This server's staged parts, sorted, but those of batch ids not in the config.
fn configured_parts(job: &ServerJob) -> Result<Vec<StagedPart>, Error> {
    let (staged, marker) = job.buckets.staged_marker()?;
    if !staged {
        return Err(Error::NotStaged { marker });
    }
    let mut unknown = BTreeSet::new();
    let parts = job
        .buckets
        .staged_parts()?
        .into_iter()
        .filter(|part| {
            let known = job.config.get(&part.batch_id).is_some();
            if !known {
                unknown.insert(part.batch_id.clone());
            }
            known
        })
        .collect();
    for batch in unknown {
        tracing::warn!("batch id {batch:?} is not in the batch config: skipped, not published");
    }
    Ok(parts)
}

/// The VDAF of a listed part's batch.
fn part_vdaf<'a>(job: &'a ServerJob, part: &StagedPart) -> &'a Vdaf {
    &job.config
        .get(&part.batch_id)
        .expect("listed parts are configured")
        .vdaf
}

/// Polls for the peer's `_SUCCESS` of `step` with exponential backoff.
fn wait_for_peer(job: &ServerJob, step: Step) -> Result<(), Error> {
    let mut delay = job.retry.delay;
    let mut attempt = 0;
    loop {
        let (arrived, marker) = job.buckets.peer_marker(step)?;
        if arrived {
            return Ok(());
        }
        if attempt == job.retry.limit {
            return Err(Error::PeerTimeout {
                step,
                marker,
                retries: job.retry.limit,
            });
        }
        tracing::info!(
            "waiting {:.1}s for the peer's {step} ({}/{})",
            delay.as_secs_f64(),
            attempt + 1,
            job.retry.limit
        );
        std::thread::sleep(delay);
        delay = delay.mul_f64(job.retry.exponent.max(1.0));
        attempt += 1;
    }
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

/// Counts a part's rows by batch id and status.
fn count_rows(counts: &mut StatusCounts, part: &StagedPart, rows: &[MessageRow]) {
    for row in rows {
        *counts
            .entry((part.batch_id.clone(), row.status))
            .or_default() += 1;
    }
}

/// Sums the workers' counts of a step; worker 0 marks it done.
fn close_step(
    worker: &mut Worker,
    job: &ServerJob,
    step: Step,
    counts: &StatusCounts,
) -> Result<(), Error> {
    let totals = all_reduce(worker, counts);
    if worker.index() == 0 {
        job.buckets
            .finish_step(step, encode_step_summary(step, &totals))?;
        tracing::info!("{step}: done");
    }
    Ok(())
}
