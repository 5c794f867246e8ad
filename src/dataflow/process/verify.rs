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
//! timely dataflow, described at [`run`]; what it does with a slice's
//! reports is in [`super::steps`].

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange as ExchangePact, Pipeline};
use timely::dataflow::operators::{Capability, Input, Operator, Probe};
use timely::dataflow::{InputHandleVec, ProbeHandle, StreamVec};
use timely::worker::Worker;

use super::slices::{
    cut, read_slice, report_rows, PartWrite, PartWriter, Slice, SliceMessage, SliceReports,
};
use super::steps::{
    load_states, store_states, verify1_message, verify1_slice, verify2_slice,
    verify_answered_slice, States,
};
use super::{close_step, part_vdaf, wait_for_peer, ServerJob, Verification};
use crate::dataflow::offload::Offload;
use crate::dataflow::{Error, Failure};
use crate::storage::server::StagedPart;
use crate::wire::protocol::{StatusCounts, Step};

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
    /// verify1 done, the peer's verify1 of its part not seen yet: the
    /// newest such slice's states wait in memory, older ones are `stored`.
    waiting: Option<(Slice, States)>,
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
                send(Step::Verify1, verify1_message(slice, sent));
                if !self.verification.verify2() {
                    return store_states(job, vdaf, part, slice.rows(), &states);
                }
                if let Some(older) = self.waiting.replace((slice, states)) {
                    self.finish_or_store(older, send)?;
                }
            }
        }
        Ok(())
    }

    /// A slice whose states waited in memory, now that a newer one waits:
    /// finished if the peer has answered its part, else its states are stored.
    fn finish_or_store(
        &mut self,
        (slice, states): (Slice, States),
        send: &mut impl FnMut(Step, SliceMessage),
    ) -> Result<(), Error> {
        let job = &*self.job;
        let part = &self.parts[slice.part];
        if job.buckets.peer_has(Step::Verify1, part)? {
            send(Step::Verify2, verify2_slice(job, part, slice, states)?);
        } else {
            store_states(job, part_vdaf(job, part), part, slice.rows(), &states)?;
            self.stored.push(slice);
        }
        Ok(())
    }

    /// The slices held for verify2: the waiting one first, then the stored
    /// ones, so that owners write each part as its slices come in.
    fn held(&mut self) -> impl Iterator<Item = Queued> {
        let waiting = self.waiting.take();
        let stored = std::mem::take(&mut self.stored);
        waiting
            .map(|(slice, states)| Queued::Held(slice, Some(states)))
            .into_iter()
            .chain(stored.into_iter().map(|slice| Queued::Held(slice, None)))
    }
}

/// One pass of verification over all parts, as a dataflow:
///
/// `tasks -> ReadParts -> (by slice) Verify -> probe verified -> (by part owner) WriteParts -> probe written`
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
        row_counts,
        verified,
        written,
    } = pass;
    let (me, peers) = (worker.index(), worker.peers());
    let rounds = parts.len().div_ceil(peers) as u64;
    let close = |worker: &mut Worker, step| {
        let rows = row_counts.borrow_mut().remove(&step).unwrap_or_default();
        close_step(worker, job, step, &rows)
    };
    for round in 0..rounds {
        let index = round as usize * peers + me;
        if index < parts.len() {
            tasks.send(Task::Read(index));
        }
        tasks.advance_to(round + 1);
        let (verifying, writing) = (round.saturating_sub(1), round.saturating_sub(2));
        failure.step_until(worker, || {
            !verified.less_than(&verifying) && !written.less_than(&writing)
        })?;
    }
    if verification == Verification::Both {
        failure.step_until(worker, || !written.less_than(&rounds))?;
        close(worker, Step::Verify1)?;
        wait_for_peer(job, Step::Verify1)?;
        tasks.send(Task::FinishHeld);
    }
    drop(tasks);
    failure.step_until(worker, || written.done())?;
    if verification == Verification::First {
        close(worker, Step::Verify1)?;
    }
    if verification.verify2() {
        close(worker, Step::Verify2)?;
    }
    Ok(())
}

/// What the driver of a pass watches: the first error of an operator, the
/// rows written by step, and the progress of verification and of the writes.
struct PassHandles {
    failure: Failure,
    row_counts: Rc<RefCell<HashMap<Step, StatusCounts>>>,
    verified: ProbeHandle<u64>,
    written: ProbeHandle<u64>,
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
    let row_counts = Rc::new(RefCell::new(HashMap::new()));
    let mut tasks = InputHandleVec::<u64, Task>::new();
    let (verified, written) = (ProbeHandle::new(), ProbeHandle::new());
    let handles = PassHandles {
        failure: failure.clone(),
        row_counts: row_counts.clone(),
        verified: verified.clone(),
        written: written.clone(),
    };
    worker.dataflow::<u64, _, _>(|scope| {
        let work = read_parts(scope.input_from(&mut tasks), job, parts, &failure);
        let verifier = Verifier {
            job: job.clone(),
            parts: parts.clone(),
            verification,
            waiting: None,
            stored: Vec::new(),
        };
        let messages = verify(work, verifier, &failure).probe_with(&verified);
        let writer = PartWriter::new(
            job.clone(),
            parts.clone(),
            (me, peers),
            last_step,
            row_counts,
        );
        write_parts(messages, writer, job, &failure).probe_with(&written);
    });
    (tasks, handles)
}

/// The `ReadParts` operator: turns each task into work, reading each part
/// on a storage thread ([`Offload`]) while the worker verifies the round
/// before.
fn read_parts<'scope>(
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

/// The `Verify` operator: holds the slices it gets under their
/// capabilities and works one per activation, re-activating itself, so
/// that what it sends flows on while it works.
fn verify<'scope>(
    work: StreamVec<'scope, u64, Work>,
    mut verifier: Verifier,
    failure: &Failure,
) -> StreamVec<'scope, u64, (Step, SliceMessage)> {
    let scope = work.scope();
    let failure = failure.clone();
    work.unary(ExchangePact::new(Work::worker), "Verify", move |_, info| {
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
            if failure.failed() {
                queue.clear();
            }
            if let Some((cap, work)) = queue.pop_front() {
                let mut session = output.session(&cap);
                failure
                    .keep(verifier.work(work, &mut |step, message| session.give((step, message))));
                if !queue.is_empty() {
                    activator.activate();
                }
            }
        }
    })
}

/// The `WriteParts` operator: on a part owner, hands each whole part's
/// write to a storage thread ([`Offload`]) while the worker verifies on,
/// and holds the round's capability until the write is done.
fn write_parts<'scope>(
    messages: StreamVec<'scope, u64, (Step, SliceMessage)>,
    mut writer: PartWriter,
    job: &Arc<ServerJob>,
    failure: &Failure,
) -> StreamVec<'scope, u64, ()> {
    let scope = messages.scope();
    let (me, peers) = (scope.index(), scope.peers());
    let (job, failure) = (job.clone(), failure.clone());
    let route = ExchangePact::new(PartWriter::route(peers));
    // Nothing comes out: the output's frontier is what tells of the writes.
    messages.unary::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
        route,
        "WriteParts",
        move |_, info| {
            let activator = scope.worker().sync_activator_for(info.address.to_vec());
            let mut writes = Offload::spawn(format!("write-parts-{me}"), activator, move |write| {
                PartWrite::write(write, &job.buckets)
            });
            move |input, _output| {
                input.for_each(|cap, data| {
                    for (step, message) in data.drain(..) {
                        if failure.failed() {
                            continue;
                        }
                        if let Some(write) = failure.keep(writer.take(step, message)).flatten() {
                            writes.send(
                                cap.retain_least(0).expect("input batches have a time"),
                                write,
                            );
                        }
                    }
                });
                for (_, written) in writes.ready() {
                    failure.keep(written);
                }
            }
        },
    )
}
