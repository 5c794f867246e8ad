//! verify1 and verify2 over the slices of every part.
//!
//! verify1 opens and verify-inits every report and sends the verifier
//! shares; verify2 combines them with the peer's and sends each report's
//! verdict, keeping one sum of accepted output shares per part for
//! `aggregate`. When both run in one pass, a slice whose part the peer has
//! already answered goes through both steps report by report, and one the
//! peer answers while its states are in memory is finished from them; other
//! slices' states are kept in the private bucket until the peer answers
//! (and are recomputed from the raw shares if a stopped run held them only
//! in memory, or a rerun cuts parts into other slices). Each pass is one
//! timely dataflow, described at [`run`].

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::rc::Rc;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange as ExchangePact, Pipeline};
use timely::dataflow::operators::{Capability, Input, Operator, Probe};
use timely::dataflow::{InputHandleVec, ProbeHandle, StreamVec};
use timely::worker::Worker;

use super::slices::{
    cut, read_slice, report_rows, PartWrite, PartWriter, ReportRow, Slice, SliceMessage,
    SliceReports,
};
use super::{by_id, close_step, part_vdaf, wait_for_peer, ServerJob, Verification};
use crate::dataflow::offload::Offload;
use crate::dataflow::{Error, Failure};
use crate::storage::messages::MessageRow;
use crate::storage::server::StagedPart;
use crate::wire::protocol::{Rejection, StatusCounts, Step};
use crate::wire::server::open_and_verify_init;
use crate::wire::vdaf::{AggregateShare, Nonce, Vdaf, VerifyState};

/// A report this server opened: the nonce its share carries and its
/// verification state.
pub struct Opened {
    pub nonce: Nonce,
    pub state: VerifyState,
}

/// A part's reports after `verify_init`, in row order: each one's
/// opened state, or the reason it has none.
pub type States = Vec<(String, Result<Opened, Rejection>)>;

/// verify1 for a slice: opens and verify-inits every report. Returns the
/// rows for the peer and this server's states.
fn verify1_slice(
    job: &ServerJob,
    vdaf: &Vdaf,
    batch_id: &str,
    rows: Vec<ReportRow>,
) -> (Vec<MessageRow>, States) {
    rows.into_iter()
        .map(|row| verify1_report(job, vdaf, batch_id, row))
        .unzip()
}

/// verify1 for one report: its row for the peer, and its state.
fn verify1_report(
    job: &ServerJob,
    vdaf: &Vdaf,
    batch_id: &str,
    row: ReportRow,
) -> (MessageRow, (String, Result<Opened, Rejection>)) {
    let result = if row.repeated {
        Err(Rejection::DuplicateReportId)
    } else {
        open_and_verify_init(vdaf, &job.secrets, batch_id, &row.payload)
    };
    let (status, share, state) = match result {
        Ok(init) => (
            Ok(()),
            init.verifier_share,
            Ok(Opened {
                nonce: init.nonce,
                state: init.state,
            }),
        ),
        Err(reason) => (Err(reason), Vec::new(), Err(reason)),
    };
    let sent = MessageRow {
        id: row.id.clone(),
        status,
        share,
        nonce: None,
    };
    (sent, (row.id, state))
}

/// Keeps a slice's states in the private bucket until verify2 needs them.
fn store_states(
    job: &ServerJob,
    vdaf: &Vdaf,
    part: &StagedPart,
    range: Range<usize>,
    states: &States,
) -> Result<(), Error> {
    if range.is_empty() {
        return Ok(());
    }
    let rows: Vec<MessageRow> = states
        .iter()
        .map(|(id, opened)| MessageRow {
            id: id.clone(),
            status: opened.as_ref().map(|_| ()).map_err(|r| *r),
            share: opened
                .as_ref()
                .map_or(Vec::new(), |o| vdaf.encode_state(&o.state)),
            nonce: opened.as_ref().ok().map(|o| o.nonce),
        })
        .collect();
    Ok(job.buckets.store_states(part, range, &rows)?)
}

/// The states of rows `range` of a part: as verify1 stored them, or, where
/// it stored none for exactly these rows (a run that held them in memory
/// and stopped, or one cut into other slices), recomputed from `rows`
/// (verification is deterministic, so they are the same states).
pub fn load_states(
    job: &ServerJob,
    vdaf: &Vdaf,
    part: &StagedPart,
    range: Range<usize>,
    rows: impl FnOnce() -> Result<Vec<ReportRow>, Error>,
) -> Result<States, Error> {
    if range.is_empty() {
        return Ok(States::new());
    }
    let Some(stored) = job.buckets.stored_states(part, range)? else {
        return Ok(verify1_slice(job, vdaf, &part.batch_id, rows()?).1);
    };
    stored
        .into_iter()
        .map(|row| {
            let opened = match (row.status, row.nonce) {
                (Ok(()), Some(nonce)) => {
                    let state =
                        vdaf.decode_state(job.secrets.role, &row.share)
                            .map_err(Error::vdaf(format!(
                                "{}: stored verification state of {}",
                                part.name, row.id
                            )))?;
                    Ok(Opened { nonce, state })
                }
                (Ok(()), None) => {
                    return Err(Error::StoredDataChanged {
                        part: part.name.clone(),
                        what: format!("the stored state of {} has no nonce", row.id),
                    })
                }
                (Err(reason), _) => Err(reason),
            };
            Ok((row.id, opened))
        })
        .collect()
}

/// Finishes verification of reports of a part from this server's states and
/// the peer's verifier shares: every report's verdict, and the sum of the
/// output shares of the accepted reports that `include` admits.
pub fn finish_states(
    job: &ServerJob,
    vdaf: &Vdaf,
    part: &StagedPart,
    states: States,
    include: impl Fn(&str) -> bool,
) -> Result<(Vec<MessageRow>, AggregateShare), Error> {
    let peer = peer_verify1(job, part)?;
    let mut sum = vdaf.aggregate_init();
    let verdicts = states
        .into_iter()
        .map(|(id, opened)| {
            let include = include(&id);
            finish_report(
                job,
                vdaf,
                part,
                &peer,
                (id, opened),
                include.then_some(&mut sum),
            )
        })
        .collect::<Result<_, _>>()?;
    Ok((verdicts, sum))
}

/// verify2 for one report: its verdict from its state and the peer's row;
/// an accepted report's output share goes into `sum`, if given.
fn finish_report(
    job: &ServerJob,
    vdaf: &Vdaf,
    part: &StagedPart,
    peer: &HashMap<String, MessageRow>,
    (id, opened): (String, Result<Opened, Rejection>),
    sum: Option<&mut AggregateShare>,
) -> Result<MessageRow, Error> {
    let mut nonce = opened.as_ref().ok().map(|o| o.nonce);
    let verdict = match (opened, peer.get(&id)) {
        (Err(reason), _) => Err(reason),
        (Ok(_), None) => Err(Rejection::MissingOnPeer),
        (Ok(_), Some(p)) if p.status.is_err() => Err(Rejection::PeerRejected),
        (Ok(opened), Some(p)) => {
            vdaf.verify_finish(&part.batch_id, job.secrets.role, &opened.state, &p.share)
        }
    };
    // A nonce the VDAF derives from both servers' shares replaces this one's.
    let verdict = verdict.map(|(output, derived)| {
        nonce = derived.or(nonce);
        output
    });
    let status = match (verdict, sum) {
        (Ok(output), Some(sum)) => {
            vdaf.accumulate(sum, &output)
                .map_err(Error::vdaf(format!("{}: output share of {id}", part.name)))?;
            Ok(())
        }
        (Ok(_), None) => Ok(()),
        (Err(reason), _) => Err(reason),
    };
    Ok(MessageRow {
        id,
        status,
        share: Vec::new(),
        nonce,
    })
}

/// verify2 for a slice whose states are at hand: its verdicts and sum, for
/// the part's owner.
fn verify2_slice(
    job: &ServerJob,
    part: &StagedPart,
    slice: Slice,
    states: States,
) -> Result<SliceMessage, Error> {
    let vdaf = part_vdaf(job, part);
    let (rows, sum) = finish_states(job, vdaf, part, states, |_| true)?;
    Ok(verdicts_message(vdaf, slice, rows, &sum))
}

/// The peer's verify1 rows of a part, by report id.
fn peer_verify1(job: &ServerJob, part: &StagedPart) -> Result<HashMap<String, MessageRow>, Error> {
    Ok(by_id(job.buckets.peer_rows(Step::Verify1, part)?))
}

/// A slice's verify2 message: its verdicts and the sum of what it accepted.
fn verdicts_message(
    vdaf: &Vdaf,
    slice: Slice,
    rows: Vec<MessageRow>,
    sum: &AggregateShare,
) -> SliceMessage {
    SliceMessage {
        slice,
        rows,
        accepted_sum: vdaf.encode_aggregate(sum),
    }
}

/// verify1 and verify2 for a slice whose part the peer has answered
/// already, report by report, so that no state is held between the steps.
/// Held for a whole slice, Prio v1's 33 KB states fall out of the cache
/// (8% of the crypto's time) and fill memory (a 189 MB part's took 124 MB).
/// Returns the two steps' slice messages.
fn verify_answered_slice(
    job: &ServerJob,
    part: &StagedPart,
    SliceReports { slice, rows }: SliceReports,
) -> Result<[SliceMessage; 2], Error> {
    let vdaf = part_vdaf(job, part);
    let peer = peer_verify1(job, part)?;
    let mut sum = vdaf.aggregate_init();
    let (mut sent, mut verdicts) = (
        Vec::with_capacity(rows.len()),
        Vec::with_capacity(rows.len()),
    );
    for row in rows {
        let (message, state) = verify1_report(job, vdaf, &part.batch_id, row);
        sent.push(message);
        verdicts.push(finish_report(
            job,
            vdaf,
            part,
            &peer,
            state,
            Some(&mut sum),
        )?);
    }
    Ok([
        SliceMessage {
            slice,
            rows: sent,
            accepted_sum: Vec::new(),
        },
        verdicts_message(vdaf, slice, verdicts, &sum),
    ])
}

/// What the driver of a pass asks of its worker's dataflow, by epoch.
#[derive(Debug, Clone)]
enum Task {
    /// Read part `index` (this worker owns it) and send a slice of it to every worker.
    Read(usize),
    /// The peer's verify1 is complete: finish verify2 of the slices this worker holds.
    FinishHeld,
}

/// What a verifying worker gets: a slice to verify, or the word that the
/// slices it holds can now be finished (routed to `worker`).
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Work {
    Slice(SliceReports),
    FinishHeld { worker: usize },
}

impl Work {
    fn worker(&self) -> u64 {
        match self {
            Work::Slice(reports) => reports.slice.index as u64,
            Work::FinishHeld { worker } => *worker as u64,
        }
    }
}

/// A verifying worker's state across the slices of a pass.
struct Verifier {
    job: Arc<ServerJob>,
    parts: Rc<[StagedPart]>,
    verification: Verification,
    /// verify1 done, the peer's verify1 of its part not seen yet: at most one
    /// slice's states wait in memory, older ones are `stored`.
    waiting: VecDeque<(Slice, States)>,
    stored: Vec<Slice>,
}

/// One unit of a verifying worker's work, done one per activation so that
/// what it sends flows on while it works.
enum Queued {
    Slice(SliceReports),
    /// A slice held for verify2, with its states if they are in memory.
    Held(Slice, Option<States>),
}

impl Verifier {
    /// Does `work`, giving each slice message it makes, with its step, to `send`.
    fn work(
        &mut self,
        work: Queued,
        send: &mut impl FnMut(Step, SliceMessage),
    ) -> Result<(), Error> {
        let job = &*self.job;
        match work {
            Queued::Held(slice, states) => {
                let part = &self.parts[slice.part];
                let states = match states {
                    Some(states) => states,
                    None => load_states(job, part_vdaf(job, part), part, slice.rows(), || {
                        read_slice(job, part, slice.rows())
                    })?,
                };
                send(Step::Verify2, verify2_slice(job, part, slice, states)?);
            }
            Queued::Slice(reports)
                if self.verification == Verification::Both
                    && job
                        .buckets
                        .peer_has(Step::Verify1, &self.parts[reports.slice.part])? =>
            {
                let [sent, verdicts] =
                    verify_answered_slice(job, &self.parts[reports.slice.part], reports)?;
                send(Step::Verify1, sent);
                send(Step::Verify2, verdicts);
                self.finish_answered(false, send)?;
            }
            Queued::Slice(SliceReports { slice, rows }) => {
                let part = &self.parts[slice.part];
                let vdaf = part_vdaf(job, part);
                if !self.verification.verify1() {
                    let states = load_states(job, vdaf, part, slice.rows(), || Ok(rows))?;
                    send(Step::Verify2, verify2_slice(job, part, slice, states)?);
                    return Ok(());
                }
                let (sent, states) = verify1_slice(job, vdaf, &part.batch_id, rows);
                send(
                    Step::Verify1,
                    SliceMessage {
                        slice,
                        rows: sent,
                        accepted_sum: Vec::new(),
                    },
                );
                if !self.verification.verify2() {
                    return store_states(job, vdaf, part, slice.rows(), &states);
                }
                self.waiting.push_back((slice, states));
                self.finish_answered(true, send)?;
            }
        }
        Ok(())
    }

    /// Finishes the waiting slices whose part the peer has answered, oldest
    /// first, and stores all but the newest of the others.
    /// `newest_unanswered`: the newest was just found unanswered, so the
    /// peer's inbox is not asked again for it.
    fn finish_answered(
        &mut self,
        newest_unanswered: bool,
        send: &mut impl FnMut(Step, SliceMessage),
    ) -> Result<(), Error> {
        let job = &*self.job;
        while let Some((oldest, _)) = self.waiting.front() {
            if newest_unanswered && self.waiting.len() == 1 {
                break;
            }
            let part = &self.parts[oldest.part];
            let answered = job.buckets.peer_has(Step::Verify1, part)?;
            if !answered && self.waiting.len() == 1 {
                break;
            }
            let (oldest, states) = self.waiting.pop_front().expect("not empty");
            if answered {
                send(Step::Verify2, verify2_slice(job, part, oldest, states)?);
            } else {
                store_states(job, part_vdaf(job, part), part, oldest.rows(), &states)?;
                self.stored.push(oldest);
            }
        }
        Ok(())
    }

    /// The slices held for verify2: the waiting one first, then the stored
    /// ones, so that owners write each part as its slices come in.
    fn held(&mut self) -> impl Iterator<Item = Queued> {
        let waiting = std::mem::take(&mut self.waiting);
        let stored = std::mem::take(&mut self.stored);
        waiting
            .into_iter()
            .map(|(slice, states)| Queued::Held(slice, Some(states)))
            .chain(stored.into_iter().map(|slice| Queued::Held(slice, None)))
    }
}

/// One pass of verification over all parts, as a dataflow:
///
/// `tasks -> ReadParts -> (by slice) Verify -> verified probe -> (by part owner) WriteParts -> probe`
///
/// Each part's owner reads it and sends one slice to every worker; every
/// worker verifies the slices it gets and sends its rows back; the owner
/// writes the part's messages of a step once all its slices are in. Epoch
/// `r` is round `r` of parts (part `r * peers + worker` is the worker's).
/// Having asked for round `r`, the driver waits until the rounds before
/// `r - 1` are verified and those before `r - 2` written (verify2's of a
/// held slice come later), then asks for the next. A probe tells of a slice
/// one step late, when the worker already verifies the next one, so this
/// is what lets a read overlap verification. Each worker holds about three
/// rounds' worth of slices at most.
///
/// When both steps run, at most one slice that the peer has not answered
/// yet waits in memory and older ones are stored; once every part's verify1
/// is written and the peer's is complete, a last epoch finishes them.
/// verify1 alone stores every slice's states; verify2 alone loads them.
pub fn run(
    worker: &mut Worker,
    job: &Arc<ServerJob>,
    parts: &Rc<[StagedPart]>,
    verification: Verification,
) -> Result<(), Error> {
    if verification == Verification::Second {
        let (done, marker) = job.buckets.step_marker(Step::Verify1)?;
        if !done {
            return Err(Error::Verify1Missing { marker });
        }
        wait_for_peer(job, Step::Verify1)?;
    }
    let (mut tasks, pass) = build(worker, job, parts, verification);
    let PassHandles {
        failure,
        written,
        verified,
        probe,
    } = pass;
    let (me, peers) = (worker.index(), worker.peers());
    let rounds = parts.len().div_ceil(peers) as u64;
    for round in 0..rounds {
        let index = round as usize * peers + me;
        if index < parts.len() {
            tasks.send(Task::Read(index));
        }
        tasks.advance_to(round + 1);
        let (verifying, writing) = (round.saturating_sub(1), round.saturating_sub(2));
        failure.step_until(worker, || {
            !verified.less_than(&verifying) && !probe.less_than(&writing)
        })?;
    }
    if verification == Verification::Both {
        failure.step_until(worker, || !probe.less_than(&rounds))?;
        close_step(worker, job, Step::Verify1, &counts(&written, Step::Verify1))?;
        wait_for_peer(job, Step::Verify1)?;
        tasks.send(Task::FinishHeld);
    }
    drop(tasks);
    failure.step_until(worker, || probe.done())?;
    if verification == Verification::First {
        close_step(worker, job, Step::Verify1, &counts(&written, Step::Verify1))?;
    }
    if verification.verify2() {
        close_step(worker, job, Step::Verify2, &counts(&written, Step::Verify2))?;
    }
    Ok(())
}

/// What the driver of a pass watches: the first error of an operator, the
/// rows written by step, and the progress of verification and of the writes.
struct PassHandles {
    failure: Failure,
    written: Rc<RefCell<HashMap<Step, StatusCounts>>>,
    verified: ProbeHandle<u64>,
    probe: ProbeHandle<u64>,
}

/// Builds the pass's dataflow on this worker; returns its input of tasks.
fn build(
    worker: &mut Worker,
    job: &Arc<ServerJob>,
    parts: &Rc<[StagedPart]>,
    verification: Verification,
) -> (InputHandleVec<u64, Task>, PassHandles) {
    let (me, peers) = (worker.index(), worker.peers());
    let last_step = if verification.verify2() {
        Step::Verify2
    } else {
        Step::Verify1
    };
    let failure = Failure::default();
    let written = Rc::new(RefCell::new(HashMap::new()));
    let mut tasks = InputHandleVec::<u64, Task>::new();
    let (verified, probe) = (ProbeHandle::new(), ProbeHandle::new());
    let handles = PassHandles {
        failure: failure.clone(),
        written: written.clone(),
        verified: verified.clone(),
        probe: probe.clone(),
    };
    worker.dataflow::<u64, _, _>(|scope| {
        let work = read_ahead(scope.input_from(&mut tasks), job, parts, &failure);
        let mut verifier = Verifier {
            job: job.clone(),
            parts: parts.clone(),
            verification,
            waiting: VecDeque::new(),
            stored: Vec::new(),
        };
        let verifying = failure.clone();
        let messages = work.unary::<CapacityContainerBuilder<Vec<(Step, SliceMessage)>>, _, _, _>(
            ExchangePact::new(Work::worker),
            "Verify",
            move |_, info| {
                let activator = scope.activator_for(info.address);
                let mut queue: VecDeque<(Capability<u64>, Queued)> = VecDeque::new();
                move |input, output| {
                    input.for_each(|cap, data| {
                        let cap = cap.retain_least(0).expect("input batches have a time");
                        for work in data.drain(..) {
                            match work {
                                Work::Slice(reports) => {
                                    queue.push_back((cap.clone(), Queued::Slice(reports)))
                                }
                                Work::FinishHeld { .. } => {
                                    queue.extend(verifier.held().map(|held| (cap.clone(), held)))
                                }
                            }
                        }
                    });
                    if verifying.failed() {
                        queue.clear();
                    }
                    if let Some((cap, work)) = queue.pop_front() {
                        let mut session = output.session(&cap);
                        let done =
                            verifier.work(work, &mut |step, message| session.give((step, message)));
                        verifying.keep(done);
                        if !queue.is_empty() {
                            activator.activate();
                        }
                    }
                }
            },
        );
        let mut writer = PartWriter::new(
            job.clone(),
            parts.clone(),
            (me, peers),
            last_step,
            written.clone(),
        );
        let writing = failure.clone();
        let writer_job = job.clone();
        messages
            .probe_with(&verified)
            .unary::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
                ExchangePact::new(PartWriter::route(peers)),
                "WriteParts",
                move |_, info| {
                    let activator = scope.worker().sync_activator_for(info.address.to_vec());
                    let mut writes =
                        Offload::spawn(format!("write-parts-{me}"), activator, move |write| {
                            PartWrite::write(write, &writer_job.buckets)
                        });
                    move |input, _output| {
                        input.for_each(|cap, data| {
                            for (step, message) in data.drain(..) {
                                if writing.failed() {
                                    continue;
                                }
                                if let Some(write) =
                                    writing.keep(writer.take(step, message)).flatten()
                                {
                                    let cap =
                                        cap.retain_least(0).expect("input batches have a time");
                                    writes.send(cap, write);
                                }
                            }
                        });
                        for (_, written) in writes.ready() {
                            writing.keep(written);
                        }
                    }
                },
            )
            .probe_with(&probe);
    });
    (tasks, handles)
}

/// The `ReadParts` operator: turns each task into work, reading each part
/// on a storage thread ([`Offload`]) while the worker verifies the round
/// before.
fn read_ahead<'scope>(
    tasks: StreamVec<'scope, u64, Task>,
    job: &Arc<ServerJob>,
    parts: &Rc<[StagedPart]>,
    failure: &Failure,
) -> StreamVec<'scope, u64, Work> {
    let scope = tasks.scope();
    let (me, peers) = (scope.index(), scope.peers());
    let (job, parts, failure) = (job.clone(), parts.clone(), failure.clone());
    tasks.unary(Pipeline, "ReadParts", move |_, info| {
        let activator = scope.worker().sync_activator_for(info.address.to_vec());
        let mut reads = Offload::spawn(
            format!("read-parts-{me}"),
            activator,
            move |(index, part): (usize, StagedPart)| {
                let rows = job.buckets.read_part(&part)?;
                Ok(cut(index, report_rows(rows), peers))
            },
        );
        move |input, output| {
            input.for_each(|cap, data| {
                for task in data.drain(..) {
                    match task {
                        Task::FinishHeld => {
                            output.session(&cap).give(Work::FinishHeld { worker: me })
                        }
                        Task::Read(index) => reads.send(
                            cap.retain_least(0).expect("input batches have a time"),
                            (index, parts[index].clone()),
                        ),
                    }
                }
            });
            for (cap, slices) in reads.ready() {
                if let Some(slices) = failure.keep(slices) {
                    output
                        .session(&cap)
                        .give_iterator(slices.into_iter().map(Work::Slice));
                }
            }
        }
    })
}

/// The rows of `step` this worker wrote, by batch id and status.
fn counts(written: &RefCell<HashMap<Step, StatusCounts>>, step: Step) -> StatusCounts {
    written.borrow_mut().remove(&step).unwrap_or_default()
}

/// A whole part's states, stored or recomputed: for `aggregate`, when it
/// must sum a part again.
pub fn part_states(
    job: &ServerJob,
    vdaf: &Vdaf,
    part: &StagedPart,
    reports: usize,
) -> Result<States, Error> {
    load_states(job, vdaf, part, 0..reports, || {
        Ok(report_rows(job.buckets.read_part(part)?))
    })
}
