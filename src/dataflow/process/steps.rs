//! verify1 and verify2 of a slice's reports, and the states kept between
//! them: what the verify pass ([`super::verify`]) does with each slice, and
//! what `aggregate` redoes for a part it must sum again.

use std::collections::HashMap;
use std::ops::Range;

use super::slices::{report_rows, ReportRow, Slice, SliceMessage, SliceReports};
use super::{by_id, part_vdaf, ServerJob};
use crate::dataflow::Error;
use crate::storage::messages::MessageRow;
use crate::storage::server::StagedPart;
use crate::wire::protocol::{Rejection, Step};
use crate::wire::server::open_and_verify_init;
use crate::wire::vdaf::{AggregateShare, Nonce, Vdaf, VerifyState};

/// A report this server opened: the nonce its share carries and its
/// verification state.
pub struct Opened {
    pub nonce: Nonce,
    pub state: VerifyState,
}

/// A report after `verify_init`: its id, and its opened state or the
/// reason it has none.
pub type ReportState = (String, Result<Opened, Rejection>);

/// A part's (or slice's) reports after `verify_init`, in row order.
pub type States = Vec<ReportState>;

/// verify1 for a slice: opens and verify-inits every report. Returns the
/// rows for the peer and this server's states.
pub(super) fn verify1_slice(
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
) -> (MessageRow, ReportState) {
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
pub(super) fn store_states(
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
    (id, opened): ReportState,
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
pub(super) fn verify2_slice(
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

/// A slice's verify1 message: its rows for the peer.
pub(super) fn verify1_message(slice: Slice, rows: Vec<MessageRow>) -> SliceMessage {
    SliceMessage {
        slice,
        rows,
        accepted_sum: Vec::new(),
    }
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
pub(super) fn verify_answered_slice(
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
        verify1_message(slice, sent),
        verdicts_message(vdaf, slice, verdicts, &sum),
    ])
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
