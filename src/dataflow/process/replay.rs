//! Anti-replay: a report counts once, however many pings carry its shares.
//!
//! A copied report keeps its nonce (it is sealed inside both shares), so
//! among the reports both servers accepted, those of one batch with one
//! nonce are copies: the one with the smallest report id counts, the others
//! are `replayed`, as are all copies of a nonce that an earlier date within
//! the replay window aggregated. Both servers decide from the same verdicts
//! and nonces (`aggregate` rejected reports whose nonces differ between
//! the servers), so they decide alike without talking.
//!
//! This is a join of keyed sets of small records, done as a hash-partitioned
//! exchange: every accepted report's `(nonce, id)` goes to the worker that
//! owns the nonce's shard, which groups them, streams the earlier dates'
//! nonces of its shards past the groups, and keeps this date's nonces for
//! the dates after. Memory is one date's accepted reports (about 80 bytes
//! each, spread over the workers, sorted rather than indexed); earlier dates
//! are read a file at a time, never held.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use timely::worker::Worker;

use super::ServerJob;
use crate::dataflow::{Error, Exchange};
use crate::storage::server::NONCE_SHARDS;
use crate::wire::vdaf::Nonce;

/// One report both servers accepted, as the join sees it. Ordered by
/// batch, nonce and report id: sorted, a nonce's copies are adjacent, the
/// one that counts first.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Accepted {
    /// Index of its batch in the config's order.
    pub batch: u32,
    pub nonce: Nonce,
    pub id: String,
    /// Index of its part in the run's part list.
    pub part: u32,
}

/// Each configured batch id with its index, as [`Accepted::batch`] names it.
pub fn batch_indices(job: &ServerJob) -> impl Iterator<Item = (&str, u32)> {
    job.config.batch_ids().zip(0u32..)
}

/// The shard of the nonce history a nonce belongs to. Nonces are random
/// bytes (a hostile client choosing them only unbalances the shards).
fn shard(nonce: &Nonce) -> usize {
    usize::from(nonce[0]) % NONCE_SHARDS
}

/// The shards this worker owns, in every process alike.
fn own_shards(index: usize, peers: usize) -> impl Iterator<Item = usize> {
    (index..NONCE_SHARDS).step_by(peers)
}

/// Runs the join on every worker: takes this worker's accepted reports and
/// returns, per part index, the ids of those that are replays, for the parts
/// this worker owns (`part % peers == index`). Keeps this date's nonces for
/// later dates.
pub fn find_replays(
    worker: &mut Worker,
    job: &ServerJob,
    accepted: Vec<Accepted>,
) -> Result<HashMap<usize, HashSet<String>>, Error> {
    let (index, peers) = (worker.index(), worker.peers());
    let arrived = Rc::new(RefCell::new(Vec::new()));
    let sink = arrived.clone();
    let mut to_shards = Exchange::new(
        worker,
        "ReplayShards",
        |a: &Accepted| shard(&a.nonce) as u64,
        move |a| sink.borrow_mut().push(a),
    );
    // Stepping now and then moves what was sent to its shard's worker, so
    // that the records are not held twice, in `accepted` and in flight.
    for (n, a) in accepted.into_iter().enumerate() {
        to_shards.send(a);
        if n % 4096 == 4095 {
            worker.step();
        }
    }
    to_shards.close_and_wait(worker);

    // Sorted, the copies of one nonce in one batch are adjacent, smallest
    // report id first: about 80 bytes a report, no index beside them.
    let mut arrived = arrived.take();
    arrived.sort_unstable();
    let seen_before = seen_in_earlier_dates(job, index, peers, &arrived)?;

    let mut keep: BTreeMap<(u32, usize), Vec<Nonce>> = BTreeMap::new();
    let mut replays = Vec::new();
    for copies in arrived.chunk_by(|x, y| (x.batch, x.nonce) == (y.batch, y.nonce)) {
        let (batch, nonce) = (copies[0].batch, copies[0].nonce);
        let first_counts = !seen_before.contains(&(batch, nonce));
        if first_counts {
            // Sorted already: `arrived` is in nonce order within a batch.
            keep.entry((batch, shard(&nonce))).or_default().push(nonce);
        }
        replays.extend(
            copies
                .iter()
                .skip(usize::from(first_counts))
                .map(|a| (a.id.clone(), a.part as usize)),
        );
    }
    drop(arrived);
    for (batch_id, batch) in batch_indices(job) {
        for s in own_shards(index, peers) {
            let nonces = keep.remove(&(batch, s)).unwrap_or_default();
            job.buckets.keep_nonces(batch_id, s, &nonces)?;
        }
    }
    if !replays.is_empty() {
        tracing::warn!(
            "{} reports are copies of others (replayed): counted once",
            replays.len()
        );
    }

    let found = Rc::new(RefCell::new(HashMap::<usize, HashSet<String>>::new()));
    let sink = found.clone();
    let mut to_owners = Exchange::new(
        worker,
        "ReplaysToOwners",
        |(_, part): &(String, usize)| *part as u64,
        move |(id, part)| {
            sink.borrow_mut().entry(part).or_default().insert(id);
        },
    );
    for replay in replays {
        to_owners.send(replay);
    }
    to_owners.close_and_wait(worker);
    Ok(found.take())
}

/// The (batch, nonce) pairs of `sorted` that an earlier date within the
/// window aggregated, read shard by shard for the shards this worker owns.
fn seen_in_earlier_dates(
    job: &ServerJob,
    index: usize,
    peers: usize,
    sorted: &[Accepted],
) -> Result<HashSet<(u32, Nonce)>, Error> {
    let mut seen = HashSet::new();
    if sorted.is_empty() {
        return Ok(seen);
    }
    for date in earlier_dates(job)? {
        for (batch_id, batch) in batch_indices(job) {
            for s in own_shards(index, peers) {
                for nonce in job.buckets.earlier_nonces(&date, batch_id, s)? {
                    let here = sorted
                        .binary_search_by(|a| (a.batch, a.nonce).cmp(&(batch, nonce)))
                        .is_ok();
                    if here {
                        seen.insert((batch, nonce));
                    }
                }
            }
        }
    }
    Ok(seen)
}

/// The dates before this run's within the replay window, newest first.
/// Only those this server finished `aggregate` for count (a date it never
/// aggregated published nothing).
fn earlier_dates(job: &ServerJob) -> Result<Vec<String>, Error> {
    let date = job.buckets.date();
    let day = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").map_err(|_| {
        Error::Cluster(format!(
            "the date {date:?} is not YYYY-MM-DD: anti-replay cannot find the dates before it"
        ))
    })?;
    let mut dates = Vec::new();
    for back in 1..=i64::from(job.replay_window_days) {
        let Some(earlier) = day.checked_sub_signed(chrono::Duration::days(back)) else {
            break;
        };
        let earlier = earlier.format("%Y-%m-%d").to_string();
        if job.buckets.aggregated_on(&earlier)? {
            dates.push(earlier);
        }
    }
    Ok(dates)
}
