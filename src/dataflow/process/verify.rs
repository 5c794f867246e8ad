//! verify1 and verify2 over the slices of every part.
//!
//! verify1 opens and verify-inits every report and sends the verifier
//! shares; verify2 combines them with the peer's and sends each report's
//! verdict, keeping one sum of accepted output shares per part for
//! `aggregate`. When both run in one pass, a slice whose part the peer has
//! already answered is finished at once with its states in memory; other
//! slices' states are kept in the private bucket until the peer answers
//! (and are recomputed from the raw shares if a stopped run held them only
//! in memory, or a rerun cuts parts into other slices).

use std::collections::VecDeque;
use std::ops::Range;

use timely::worker::Worker;

use super::slices::{
    read_slice, report_rows, scatter, slice_channel, PartWriter, ReportRow, Slice, SliceMessage,
    SliceReports,
};
use super::{by_id, close_step, count_rows, part_vdaf, wait_for_peer, ServerJob, Verification};
use crate::dataflow::Error;
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
    let mut sent = Vec::with_capacity(rows.len());
    let mut states = Vec::with_capacity(rows.len());
    for row in rows {
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
        sent.push(MessageRow {
            id: row.id.clone(),
            status,
            share,
            nonce: None,
        });
        states.push((row.id, state));
    }
    (sent, states)
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
    let peer = by_id(job.buckets.peer_rows(Step::Verify1, part)?);
    let mut sum = vdaf.aggregate_init();
    let mut verdicts = Vec::with_capacity(states.len());
    for (id, opened) in states {
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
        let status = match verdict {
            Ok(output) if include(&id) => {
                vdaf.accumulate(&mut sum, &output)
                    .map_err(Error::vdaf(format!("{}: output share of {id}", part.name)))?;
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(reason) => Err(reason),
        };
        verdicts.push(MessageRow {
            id,
            status,
            share: Vec::new(),
            nonce,
        });
    }
    Ok((verdicts, sum))
}

/// verify2 for a slice whose states are at hand: its verdicts and sum go
/// to the part's owner.
fn verify2_slice(
    job: &ServerJob,
    parts: &[StagedPart],
    writer: &mut PartWriter,
    slice: Slice,
    states: States,
) -> Result<(), Error> {
    let part = &parts[slice.part];
    let vdaf = part_vdaf(job, part);
    let (rows, sum) = finish_states(job, vdaf, part, states, |_| true)?;
    writer.send(
        Step::Verify2,
        SliceMessage {
            slice,
            rows,
            accepted_sum: vdaf.encode_aggregate(&sum),
        },
    );
    Ok(())
}

/// One pass of verification over all parts. Each part's owner reads it and
/// sends one slice to every worker; every worker verifies the slices it
/// gets and sends its rows back; the owner writes the part's messages.
/// Owners read parts in rounds, at most one round ahead of what they have
/// taken themselves, so every worker holds a few parts' worth of slices at most.
///
/// When both steps run, at most one slice that the peer has not answered
/// yet waits in memory; older ones are stored. verify1 alone stores every
/// slice's states; verify2 alone loads them.
pub fn run(
    worker: &mut Worker,
    job: &ServerJob,
    parts: &[StagedPart],
    verification: Verification,
) -> Result<(), Error> {
    if verification == Verification::Second {
        let (done, marker) = job.buckets.step_marker(Step::Verify1)?;
        if !done {
            return Err(Error::Verify1Missing { marker });
        }
        wait_for_peer(job, Step::Verify1)?;
    }
    let peers = worker.peers();
    let mut reports = slice_channel(worker);
    let last_step = if verification.verify2() {
        Step::Verify2
    } else {
        Step::Verify1
    };
    let mut writer = PartWriter::new(worker, job, parts, last_step);
    let mut verify1_counts = StatusCounts::new();
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
        let mut busy = writer.write_whole_parts()?;
        if next_round < rounds && next_round <= complete + 1 {
            busy = true;
            let index = next_round * peers + worker.index();
            next_round += 1;
            if index < parts.len() {
                scatter(job, parts, index, peers, &mut reports)?;
            }
        } else if let Some(SliceReports { slice, rows }) = reports.take() {
            taken[slice.part / peers] += 1;
            while complete < rounds && taken[complete] == in_round(complete) {
                complete += 1;
            }
            busy = true;
            let part = &parts[slice.part];
            let vdaf = part_vdaf(job, part);
            if !verification.verify1() {
                let states = load_states(job, vdaf, part, slice.rows(), || Ok(rows))?;
                verify2_slice(job, parts, &mut writer, slice, states)?;
            } else {
                let (sent, states) = verify1_slice(job, vdaf, &part.batch_id, rows);
                count_rows(&mut verify1_counts, part, &sent);
                writer.send(
                    Step::Verify1,
                    SliceMessage {
                        slice,
                        rows: sent,
                        accepted_sum: Vec::new(),
                    },
                );
                if verification.verify2() {
                    waiting.push_back((slice, states));
                } else {
                    store_states(job, vdaf, part, slice.rows(), &states)?;
                }
            }
            while let Some((oldest, _)) = waiting.front() {
                let answered = job.buckets.peer_has(Step::Verify1, &parts[oldest.part])?;
                if !answered && waiting.len() == 1 {
                    break;
                }
                let (oldest, states) = waiting.pop_front().expect("not empty");
                if answered {
                    verify2_slice(job, parts, &mut writer, oldest, states)?;
                } else {
                    let part = &parts[oldest.part];
                    store_states(job, part_vdaf(job, part), part, oldest.rows(), &states)?;
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
    if verification.verify1() {
        writer.finish(worker, Step::Verify1)?;
        close_step(worker, job, Step::Verify1, &verify1_counts)?;
    }
    if !verification.verify2() {
        return Ok(());
    }
    if verification.verify1() {
        wait_for_peer(job, Step::Verify1)?;
        // The waiting slice first, then the stored ones; owners write each
        // part as its slices come in, so nothing piles up.
        let rest = waiting
            .into_iter()
            .map(|(slice, states)| (slice, Some(states)))
            .chain(stored.into_iter().map(|slice| (slice, None)));
        for (slice, states) in rest {
            let part = &parts[slice.part];
            let states = match states {
                Some(states) => states,
                None => load_states(job, part_vdaf(job, part), part, slice.rows(), || {
                    read_slice(job, part, slice.rows())
                })?,
            };
            verify2_slice(job, parts, &mut writer, slice, states)?;
            writer.write_whole_parts()?;
            worker.step();
        }
    }
    writer.finish(worker, Step::Verify2)?;
    let counts = std::mem::take(&mut writer.verify2_counts);
    close_step(worker, job, Step::Verify2, &counts)
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
