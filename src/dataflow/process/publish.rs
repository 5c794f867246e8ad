//! publish: both servers' aggregate messages for each batch are compared;
//! a batch whose messages cover different reports is refused, one below
//! its `min_batch_size` withheld, and the others unsharded and written.
//! A batch most of whose reports one reason rejected raises an alarm
//! ([`crate::wire::protocol::AlarmRule`]), whatever its status.

use base64::Engine;

use super::ServerJob;
use crate::dataflow::Error;
use crate::storage::messages::AggregateMessage;
use crate::storage::tables::malformed;
use crate::wire::config::BatchSpec;
use crate::wire::protocol::{BatchOutcome, BatchStatus};
use crate::wire::vdaf::AggregateShare;
use crate::wire::Role;

/// The start of a digest, for messages; a short (forged) digest is shown whole.
fn short(digest: &str) -> &str {
    digest.get(..16).unwrap_or(digest)
}

/// Decides every configured batch and writes `processed/`.
pub fn run(job: &ServerJob) -> Result<Vec<BatchOutcome>, Error> {
    job.buckets.start_publish()?;
    let mut outcomes = Vec::new();
    for (batch_id, spec) in job.config.iter() {
        let mut outcome = BatchOutcome {
            batch_id: batch_id.to_string(),
            vdaf: spec.spec().name().into(),
            ..Default::default()
        };
        let own = job.buckets.own_aggregate(batch_id)?;
        let peer = job.buckets.peer_aggregate(batch_id)?;
        match (own, peer) {
            (Some(own), Some(peer)) => decide(job, spec, &own, &peer, &mut outcome)?,
            _ => {
                outcome.status = BatchStatus::Refused;
                outcome.message = Some("an aggregate message is missing for this batch".into());
            }
        }
        if outcome.status == BatchStatus::Published {
            job.buckets.publish(&outcome, spec)?;
        } else {
            job.buckets.withdraw(batch_id)?;
        }
        outcomes.push(outcome);
    }
    job.buckets.finish_publish(&outcomes)?;
    Ok(outcomes)
}

/// One batch's outcome from both servers' aggregate messages.
fn decide(
    job: &ServerJob,
    spec: &BatchSpec,
    own: &AggregateMessage,
    peer: &AggregateMessage,
    outcome: &mut BatchOutcome,
) -> Result<(), Error> {
    outcome.reports_total = own.reports_total;
    outcome.reports_aggregated = own.reports_aggregated;
    outcome.rejected = own.rejected.clone();
    outcome.alarm = job.alarm.check(own.reports_total, &own.rejected);
    if own.reports_aggregated != peer.reports_aggregated || own.digest != peer.digest {
        outcome.status = BatchStatus::Refused;
        outcome.message = Some(format!(
            "the servers aggregated different reports ({} with digest {} here, {} with digest {} at the peer)",
            own.reports_aggregated,
            short(&own.digest),
            peer.reports_aggregated,
            short(&peer.digest)
        ));
        return Ok(());
    }
    if own.reports_aggregated < spec.min_batch_size {
        outcome.status = BatchStatus::Withheld;
        outcome.message = Some(format!(
            "{} reports is below min_batch_size {}",
            own.reports_aggregated, spec.min_batch_size
        ));
        return Ok(());
    }
    let decode = |m: &AggregateMessage| -> Result<AggregateShare, Error> {
        let what = format!("aggregate share of {}", outcome.batch_id);
        let share = m.share.as_deref().ok_or_else(|| {
            malformed(
                &what,
                "no share, though the batch reaches its min_batch_size",
            )
        })?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(share)
            .map_err(|e| malformed(&what, e))?;
        spec.vdaf
            .decode_aggregate(&bytes)
            .map_err(Error::vdaf(what))
    };
    let (mine, theirs) = (decode(own)?, decode(peer)?);
    let (a, b) = match job.secrets.role {
        Role::A => (&mine, &theirs),
        Role::B => (&theirs, &mine),
    };
    let result = spec
        .vdaf
        .unshard(a, b, own.reports_aggregated as usize)
        .map_err(Error::vdaf(format!("unsharding {}", outcome.batch_id)))?;
    outcome.status = BatchStatus::Published;
    outcome.aggregate = Some(result);
    Ok(())
}
