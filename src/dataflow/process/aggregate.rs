//! aggregate: per part, the sum of the output shares of the reports both
//! servers accepted (with the same nonce, and not replays), with a digest of
//! their ids; per batch, those sums merged into the aggregate message for
//! the peer.

use std::collections::{BTreeMap, HashSet};

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use timely::worker::Worker;

use super::replay::{batch_indices, find_replays, Accepted};
use super::steps::{finish_states, part_states};
use super::{by_id, part_vdaf, ServerJob};
use crate::dataflow::{gather_at_first, Error};
use crate::storage::messages::AggregateMessage;
use crate::storage::server::StagedPart;
use crate::wire::protocol::{Rejection, RejectionCounts, Step};
use crate::wire::vdaf::{Nonce, Vdaf};

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
    rejected: Vec<(Rejection, u64)>,
}

/// A part's reports as both servers' verdicts leave them.
struct PartVerdicts {
    index: usize,
    reports: u64,
    rejected: RejectionCounts,
    /// The reports both accepted with the same nonce, in row order.
    accepted: Vec<(String, Nonce)>,
    /// Reports this server accepted but the peer did not, or whose nonces
    /// differ: verify2's kept sum covers them, so it cannot be used.
    only_here: u64,
}

/// Compares this server's verdicts on a part with the peer's.
fn judge_part(job: &ServerJob, parts: &[StagedPart], index: usize) -> Result<PartVerdicts, Error> {
    let part = &parts[index];
    let peer_verdicts = by_id(job.buckets.peer_rows(Step::Verify2, part)?);
    let mut verdicts = PartVerdicts {
        index,
        reports: 0,
        rejected: RejectionCounts::new(),
        accepted: Vec::new(),
        only_here: 0,
    };
    for own in job.buckets.own_rows(Step::Verify2, part)? {
        verdicts.reports += 1;
        let peer = peer_verdicts.get(&own.id);
        let reason = match (own.status, peer) {
            (Ok(()), Some(p)) if p.status.is_ok() => {
                let nonce = own.nonce.ok_or_else(|| Error::StoredDataChanged {
                    part: part.name.clone(),
                    what: format!("this server's verdict on {} has no nonce", own.id),
                })?;
                if p.nonce == Some(nonce) {
                    verdicts.accepted.push((own.id, nonce));
                    continue;
                }
                Rejection::NonceMismatch
            }
            (Ok(()), Some(_)) => Rejection::PeerVerdictReject,
            (Ok(()), None) => Rejection::MissingOnPeer,
            (Err(reason), _) => reason,
        };
        if own.status.is_ok() {
            verdicts.only_here += 1;
        }
        *verdicts.rejected.entry(reason).or_default() += 1;
    }
    Ok(verdicts)
}

/// The sum of the output shares of a part's reports that both servers
/// accepted, but the `replays`.
fn aggregate_part(
    job: &ServerJob,
    part: &StagedPart,
    mut verdicts: PartVerdicts,
    replays: &HashSet<String>,
) -> Result<PartAggregate, Error> {
    let vdaf = part_vdaf(job, part);
    verdicts.accepted.retain(|(id, _)| !replays.contains(id));
    if !replays.is_empty() {
        *verdicts.rejected.entry(Rejection::Replayed).or_default() += replays.len() as u64;
    }
    let PartVerdicts {
        reports,
        rejected,
        accepted,
        only_here,
        ..
    } = verdicts;
    let mut ids = Sha256::new();
    for (id, _) in &accepted {
        ids.update(id.as_bytes());
    }
    let both_accepted: HashSet<String> = accepted.into_iter().map(|(id, _)| id).collect();
    let left_out = only_here + replays.len() as u64;
    let stored_sum = if left_out == 0 {
        // None from a verify2 run that kept no sum: summed again below.
        job.buckets.accepted_sum(part)?.map(|bytes| bytes.to_vec())
    } else {
        tracing::warn!(
            "{}: {left_out} reports this server accepted are not aggregated (the peer did not \
             accept them, their nonces differ, or they are replays); summing the others again",
            part.name
        );
        None
    };
    let share = match stored_sum {
        Some(share) => share,
        None => {
            let states = part_states(job, vdaf, part, reports as usize)?;
            let (verdicts, sum) =
                finish_states(job, vdaf, part, states, |id| both_accepted.contains(id))?;
            let summed = verdicts
                .iter()
                .filter(|r| r.status.is_ok() && both_accepted.contains(&r.id))
                .count();
            if summed != both_accepted.len() {
                return Err(Error::StoredDataChanged {
                    part: part.name.clone(),
                    what: format!(
                        "{summed} of the {} reports both servers accepted verify again",
                        both_accepted.len()
                    ),
                });
            }
            vdaf.encode_aggregate(&sum)
        }
    };
    Ok(PartAggregate {
        batch_id: part.batch_id.clone(),
        part: part.name.clone(),
        reports,
        aggregated: both_accepted.len() as u64,
        digest: ids.finalize().into(),
        share,
        rejected: rejected.into_iter().collect(),
    })
}

/// Every worker judges its parts (part `n` is worker `n % peers`'), the
/// workers find the replays among the reports both servers accepted, and
/// every worker sums its parts; worker 0 merges them per batch and sends
/// each batch's aggregate message, an empty one for a batch with no reports.
pub fn run(worker: &mut Worker, job: &ServerJob, parts: &[StagedPart]) -> Result<(), Error> {
    let (index, peers) = (worker.index(), worker.peers());
    let batch_index: BTreeMap<&str, u32> = batch_indices(job).collect();
    let mut judged = Vec::new();
    let mut accepted = Vec::new();
    let mine = (index..parts.len()).step_by(peers);
    job.progress.expect(mine.len() as u64);
    for n in mine {
        let verdicts = judge_part(job, parts, n)?;
        let batch = batch_index[parts[n].batch_id.as_str()];
        accepted.extend(verdicts.accepted.iter().map(|(id, nonce)| Accepted {
            batch,
            nonce: *nonce,
            id: id.clone(),
            part: n as u32,
        }));
        judged.push(verdicts);
    }
    let mut replays = find_replays(worker, job, accepted)?;
    let mut sums = Vec::with_capacity(judged.len());
    for verdicts in judged {
        let part = &parts[verdicts.index];
        let replays = replays.remove(&verdicts.index).unwrap_or_default();
        let reports = verdicts.reports;
        sums.push(aggregate_part(job, part, verdicts, &replays)?);
        job.progress.advance(1, reports);
    }
    let gathered = gather_at_first(worker, sums);
    if index != 0 {
        return Ok(());
    }
    let mut by_batch: BTreeMap<String, Vec<PartAggregate>> = job
        .config
        .batch_ids()
        .map(|batch_id| (batch_id.to_string(), Vec::new()))
        .collect();
    for p in gathered {
        by_batch.entry(p.batch_id.clone()).or_default().push(p);
    }
    for (batch_id, mut parts) in by_batch {
        parts.sort_by(|a, b| a.part.cmp(&b.part));
        let spec = job.config.get(&batch_id).expect("configured");
        let mut message = batch_message(batch_id, &spec.vdaf, &parts)?;
        // Both servers count the reports both accepted alike: below the
        // threshold neither sends its share, so no one can compute the sum.
        if message.reports_aggregated < spec.min_batch_size {
            message.share = None;
        }
        job.buckets.send_aggregate(&message)?;
    }
    job.buckets.finish_step(Step::Aggregate, b"{}".to_vec())?;
    tracing::info!("aggregate: done");
    Ok(())
}

/// A batch's aggregate message from its parts' sums, in part order.
fn batch_message(
    batch_id: String,
    vdaf: &Vdaf,
    parts: &[PartAggregate],
) -> Result<AggregateMessage, Error> {
    let mut agg = vdaf.aggregate_init();
    let mut digest = Sha256::new();
    let mut rejected = RejectionCounts::new();
    let (mut total, mut aggregated) = (0, 0);
    for p in parts {
        vdaf.merge_encoded(&mut agg, &p.share)
            .map_err(Error::vdaf(format!("aggregate share of {}", p.part)))?;
        digest.update(p.digest);
        total += p.reports;
        aggregated += p.aggregated;
        for (reason, n) in &p.rejected {
            *rejected.entry(*reason).or_default() += n;
        }
    }
    Ok(AggregateMessage {
        batch_id,
        vdaf: vdaf.spec().name().into(),
        reports_total: total,
        reports_aggregated: aggregated,
        digest: hex::encode(digest.finalize()),
        share: Some(base64::engine::general_purpose::STANDARD.encode(vdaf.encode_aggregate(&agg))),
        rejected,
    })
}
