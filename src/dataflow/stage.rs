//! The staging job: an ingestion dump becomes per-server, per-batch-id
//! partitions, replacing the old Spark job.
//!
//! Phases, each a dataflow that every worker runs to completion in turn:
//! 0. listing: worker 0 lists the input and all workers take its sorted
//!    list, spread over them by file size;
//! 1. scan: workers read their share of the input files, spill each
//!    entry's shares to a local file (memory keeps its report id and where
//!    its shares are) and send each ping's id with its (file, record) order
//!    to the worker that owns the id. Owners tell readers which of their
//!    copies lost to an earlier copy of the same ping;
//! 2. totals: share bytes per batch id are summed across workers, which fixes
//!    how many parts each batch gets;
//! 3. partition: one round of parts at a time, every worker reads the
//!    round's shares back from its spill and routes them to the part's
//!    writer, which sorts and writes the part for both servers;
//! 4. summary: counters are summed and worker 0 writes the markers.
//!
//! Each share is spilled and read back once, and crosses between workers
//! (or machines) once, on its way to its part's writer. Memory holds an index
//! of the entries read (not their shares), the ping-id set, and one part per
//! worker.

use std::cell::RefCell;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Exchange as ExchangePact;
use timely::dataflow::operators::Input;
use timely::dataflow::{InputHandleVec, ProbeHandle};
use timely::worker::Worker;

use super::{
    all_reduce, broadcast_from_first, bump, consume_into, fatal, route_hash, run_until_done,
    spread_by_size,
};
use crate::storage::input::{read_records, InputFormat, RawPing};
use crate::storage::location::Location;
use crate::storage::spill::{ShareSpill, Spilled};
use crate::storage::staged::{write_part, StagedFormat, StagedLayout, SUCCESS, SUMMARY};
use crate::wire::ping::{decode_base64, parse_ping, PingRejection};
use crate::wire::report_id::{report_id, ReportId};
use crate::wire::Role;

pub use super::Counters;

/// Everything a staging run needs; shared read-only by all workers.
pub struct StageJob {
    pub date: String,
    pub input: Location,
    /// Only files of this format; `None` takes every known extension.
    pub input_format: Option<InputFormat>,
    pub layout: StagedLayout,
    pub output_format: StagedFormat,
    /// Target share bytes (both servers' shares) per part.
    pub partition_size: u64,
    pub secret: Vec<u8>,
    pub skip_unreadable: bool,
    pub spill_dir: PathBuf,
    pub progress: ReadProgress,
}

/// The progress bar while reading: input bytes read of this process's
/// total, with files and pings so far. Shared by the process's workers.
pub struct ReadProgress {
    bar: indicatif::ProgressBar,
    files: AtomicU64,
    pings: AtomicU64,
}

impl ReadProgress {
    pub fn new(bar: indicatif::ProgressBar) -> Self {
        bar.set_length(0);
        ReadProgress {
            bar,
            files: AtomicU64::new(0),
            pings: AtomicU64::new(0),
        }
    }

    /// A worker of this process will read `bytes` more.
    fn expect(&self, bytes: u64) {
        self.bar.inc_length(bytes);
    }

    fn file_done(&self, bytes: u64, pings: u64) {
        let files = self.files.fetch_add(1, Ordering::Relaxed) + 1;
        let pings = self.pings.fetch_add(pings, Ordering::Relaxed) + pings;
        self.bar.inc(bytes);
        self.bar
            .set_message(format!("{files} files, {pings} pings"));
    }
}

/// One input file, as listed.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct InputFile {
    rel: String,
    size: u64,
    format: InputFormat,
}

/// A copy of a ping, as its id's owner sees it: the id and where the copy is.
type PingCopy = (String, Order);

/// (file index, record index): of several copies of a ping, the first in
/// this order wins.
type Order = (u32, u32);

/// A report on its way to the worker that writes its part.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct StagedReport {
    /// The part, as a place in [`PartSlots`].
    slot: u32,
    report_id: ReportId,
    #[serde(with = "serde_bytes")]
    share_a: Vec<u8>,
    #[serde(with = "serde_bytes")]
    share_b: Vec<u8>,
}

/// Runs the job on a timely cluster; returns the global counters.
pub fn run(job: StageJob, config: timely::Config) -> Result<Counters, String> {
    super::execute(job, config, stage_worker)
}

fn stage_worker(worker: &mut Worker, job: &StageJob) -> Counters {
    let files = shared_listing(worker, job);
    if worker.index() == 0 {
        job.layout.clear().unwrap_or_else(|e| fatal(e));
    }
    let mut local = Counters::new();
    let started = std::time::Instant::now();
    let sizes: Vec<u64> = files.iter().map(|f| f.size).collect();
    let readers = spread_by_size(&sizes, worker.peers());
    let read = scan(worker, job, &files, &readers, &mut local);
    tracing::debug!(
        worker = worker.index(),
        seconds = started.elapsed().as_secs_f64(),
        "scan done"
    );
    let totals = all_reduce(worker, &local);
    let mut written = partition(worker, job, read, &totals);
    tracing::debug!(
        worker = worker.index(),
        seconds = started.elapsed().as_secs_f64(),
        "partition done"
    );
    bump(
        &mut written,
        "files_listed",
        if worker.index() == 0 {
            files.len() as u64
        } else {
            0
        },
    );
    let mut summary = all_reduce(worker, &written);
    for (k, v) in totals {
        if !k.starts_with("share_bytes/") {
            summary.insert(k, v);
        }
    }
    if worker.index() == 0 {
        write_markers(job, &summary).unwrap_or_else(|e| fatal(e));
    }
    summary
}

/// Worker 0 lists the input and every worker takes that list, so that all
/// split the same files among them even if the input changes meanwhile.
fn shared_listing(worker: &mut Worker, job: &StageJob) -> Vec<InputFile> {
    let listed: Vec<Result<InputFile, String>> = if worker.index() == 0 {
        match list_inputs(job) {
            Ok(files) => files.into_iter().map(Ok).collect(),
            Err(e) => vec![Err(e)],
        }
    } else {
        Vec::new()
    };
    broadcast_from_first(worker, listed)
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| fatal(e))
}

/// Lists the input, sorted, keeping dump files of the requested date.
fn list_inputs(job: &StageJob) -> Result<Vec<InputFile>, String> {
    let listed = job.input.list().map_err(|e| e.to_string())?;
    let files: Vec<InputFile> = listed
        .into_iter()
        .filter_map(|(rel, size)| {
            let format = InputFormat::of_path(&rel)?;
            if job.input_format.is_some_and(|f| f != format) {
                return None;
            }
            // The sink layout starts with the submission date: skip other days.
            let first = rel.split('/').next().unwrap_or_default();
            if looks_like_date(first) && first != job.date {
                return None;
            }
            Some(InputFile { rel, size, format })
        })
        .collect();
    if files.is_empty() {
        return Err(format!(
            "no input files under {} (looked for .ndjson, .ndjson.gz, .parquet, .avro)",
            job.input.url()
        ));
    }
    Ok(files)
}

fn looks_like_date(s: &str) -> bool {
    s.len() == 10 && chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok()
}

/// What a worker keeps of the pings it read: their shares in a local spill
/// file, and per entry its report id and where its shares are. The shares
/// stay with their reader until their part is written.
struct ReadPings {
    spill: ShareSpill,
    entries: Vec<ReadEntry>,
    /// Batch ids, numbered in order of arrival, so entries hold a number.
    batch_ids: Vec<String>,
    batch_numbers: HashMap<String, u32>,
}

struct ReadEntry {
    order: Order,
    batch: u32,
    report_id: ReportId,
    shares: Spilled,
}

impl ReadPings {
    fn batch_number(&mut self, batch_id: &str) -> u32 {
        if let Some(&n) = self.batch_numbers.get(batch_id) {
            return n;
        }
        let n = self.batch_ids.len() as u32;
        self.batch_ids.push(batch_id.to_string());
        self.batch_numbers.insert(batch_id.to_string(), n);
        n
    }
}

/// What the owner of a set of ping ids keeps: per id, the order of the first
/// copy seen so far, and the order of every copy that lost to another.
#[derive(Default)]
struct PingIds {
    first: HashMap<String, Order>,
    losers: Vec<Order>,
}

impl PingIds {
    fn add(&mut self, (ping_id, order): PingCopy) {
        match self.first.entry(ping_id) {
            Entry::Vacant(v) => {
                v.insert(order);
            }
            Entry::Occupied(mut o) => {
                let first = o.get_mut();
                self.losers.push(order.max(*first));
                *first = order.min(*first);
            }
        }
    }
}

/// Phase 1: read this worker's files, spill their shares locally and send
/// each ping's id to the worker that owns it. Returns what was read and the
/// orders of this worker's copies that lost to an earlier copy.
fn scan(
    worker: &mut Worker,
    job: &StageJob,
    files: &[InputFile],
    readers: &[usize],
    local: &mut Counters,
) -> (ReadPings, HashSet<Order>) {
    let index = worker.index();
    let spill_path = job.spill_dir.join(format!("shares-{index}.bin"));
    let mut read = ReadPings {
        spill: ShareSpill::create(&spill_path)
            .unwrap_or_else(|e| fatal(format!("{}: {e}", spill_path.display()))),
        entries: Vec::new(),
        batch_ids: Vec::new(),
        batch_numbers: HashMap::new(),
    };
    let ids = Rc::new(RefCell::new(PingIds::default()));
    let mut copies = InputHandleVec::<u64, PingCopy>::new();
    let probe = ProbeHandle::<u64>::new();
    let sink = ids.clone();
    worker.dataflow::<u64, _, _>(|scope| {
        consume_into(
            scope.input_from(&mut copies),
            ExchangePact::new(|(id, _): &PingCopy| route_hash(&[id.as_bytes()])),
            "OwnPingIds",
            &probe,
            move |copy| sink.borrow_mut().add(copy),
        );
    });
    let mine = || {
        files
            .iter()
            .enumerate()
            .filter(|(i, _)| readers[*i] == index)
    };
    job.progress.expect(mine().map(|(_, f)| f.size).sum());
    // One buffer for every file this worker reads.
    let mut data = Vec::new();
    for (file_index, file) in mine() {
        let url = format!("{}/{}", job.input.url(), file.rel);
        job.input
            .read_into(&file.rel, &mut data)
            .unwrap_or_else(|e| fatal(e));
        // Records are decoded and spilled as they are read, but they count
        // once the whole file was readable: an unreadable file is skipped
        // whole (its spilled shares stay unused), never in part.
        let mut entries = Vec::new();
        let mut file_copies = Vec::new();
        let mut counted = Counters::new();
        let mut record_index = 0u32;
        let outcome = read_records(&url, file.format, &data, |record| {
            let order = (file_index as u32, record_index);
            record_index += 1;
            if let Some(ping_id) =
                read_ping(job, &mut read, record, order, &mut entries, &mut counted)
            {
                file_copies.push((ping_id, order));
            }
        });
        if let Err(e) = outcome {
            if !job.skip_unreadable {
                fatal(format!(
                    "{e}\n(pass --skip-unreadable to count such files and go on)"
                ));
            }
            tracing::warn!("skipping unreadable file: {e}");
            bump(local, "files_unreadable", 1);
            job.progress.file_done(file.size, 0);
            continue;
        }
        bump(local, "files_read", 1);
        bump(local, "bytes_read", file.size);
        job.progress
            .file_done(file.size, counted.get("pings_read").copied().unwrap_or(0));
        for (key, n) in counted {
            bump(local, key, n);
        }
        read.entries.append(&mut entries);
        for copy in file_copies {
            copies.send(copy);
        }
        worker.step();
    }
    copies.close();
    run_until_done(worker, &probe);
    let losers = Rc::try_unwrap(ids)
        .ok()
        .expect("scan is finished")
        .into_inner()
        .losers;
    bump(local, "duplicates_dropped", losers.len() as u64);
    (read, return_losers(worker, losers, readers.to_vec()))
}

/// Sends the orders of copies that lost back to the workers that read them.
fn return_losers(worker: &mut Worker, losers: Vec<Order>, readers: Vec<usize>) -> HashSet<Order> {
    let mut input = InputHandleVec::<u64, Order>::new();
    let probe = ProbeHandle::<u64>::new();
    let mine = Rc::new(RefCell::new(HashSet::new()));
    let sink = mine.clone();
    worker.dataflow::<u64, _, _>(|scope| {
        consume_into(
            scope.input_from(&mut input),
            ExchangePact::new(move |(file, _): &Order| readers[*file as usize] as u64),
            "ReturnLosers",
            &probe,
            move |order| {
                sink.borrow_mut().insert(order);
            },
        );
    });
    for order in losers {
        input.send(order);
    }
    input.close();
    run_until_done(worker, &probe);
    mine.take()
}

/// Decodes one record of a dump and spills its shares; returns its ping id,
/// or `None` (counted by reason) for a record that is not a ping.
fn read_ping(
    job: &StageJob,
    read: &mut ReadPings,
    record: Result<RawPing, PingRejection>,
    order: Order,
    entries: &mut Vec<ReadEntry>,
    counters: &mut Counters,
) -> Option<String> {
    let parsed = record.and_then(|raw| {
        if raw
            .submission_date
            .as_deref()
            .is_some_and(|d| d != job.date)
        {
            return Err(PingRejection::DateOutside);
        }
        parse_ping(&raw.body)
    });
    let ping = match parsed {
        Ok(ping) => ping,
        Err(r) => {
            bump(counters, format!("rejected/{}", r.reason()), 1);
            return None;
        }
    };
    bump(counters, "pings_read", 1);
    for bad in &ping.bad_entries {
        bump(counters, format!("rejected/{}", bad.reason()), 1);
    }
    let mut seen: HashMap<&str, u32> = HashMap::new();
    for e in &ping.entries {
        let k = seen.entry(&e.batch_id).or_default();
        let number = *k;
        *k += 1;
        let (Some(a), Some(b)) = (decode_base64(&e.share_a), decode_base64(&e.share_b)) else {
            bump(counters, "rejected/bad_share_base64", 1);
            continue;
        };
        bump(
            counters,
            format!("share_bytes/{}", e.batch_id),
            (a.len() + b.len()) as u64,
        );
        let shares = read
            .spill
            .append(&a, &b)
            .unwrap_or_else(|err| fatal(format!("spill file: {err}")));
        entries.push(ReadEntry {
            order,
            batch: read.batch_number(&e.batch_id),
            report_id: report_id(&job.secret, &ping.id, &e.batch_id, number),
            shares,
        });
    }
    Some(ping.id)
}

/// Every part of every batch id in one global order (batch ids sorted, then
/// part number). A part's place in that order is its slot: worker
/// `slot % peers` writes it in round `slot / peers`, so every worker writes
/// its share of parts, one per round.
struct PartSlots {
    parts: Vec<(String, u32)>,
    /// Per batch id: its first slot and its number of parts.
    batches: HashMap<String, (u32, u32)>,
}

impl PartSlots {
    /// Enough parts per batch id that each holds about `partition_size` share bytes.
    fn new(totals: &Counters, partition_size: u64) -> Self {
        let mut sizes: Vec<(&str, u64)> = totals
            .iter()
            .filter_map(|(k, &bytes)| Some((k.strip_prefix("share_bytes/")?, bytes)))
            .collect();
        sizes.sort();
        let mut slots = PartSlots {
            parts: Vec::new(),
            batches: HashMap::new(),
        };
        for (batch_id, bytes) in sizes {
            let count = bytes
                .div_ceil(partition_size.max(1))
                .clamp(1, u64::from(u32::MAX)) as u32;
            let first = slots.parts.len() as u32;
            slots
                .parts
                .extend((0..count).map(|part| (batch_id.to_string(), part)));
            slots.batches.insert(batch_id.to_string(), (first, count));
        }
        slots
    }

    /// The slot of a report's part: `u64be(report_id[0..8]) mod parts`.
    fn of(&self, batch_id: &str, id: &ReportId) -> usize {
        let (first, count) = self.batches[batch_id];
        let position = u64::from_be_bytes(id[..8].try_into().expect("8 bytes"));
        first as usize + (position % u64::from(count)) as usize
    }
}

/// Phase 3: assign report ids and parts, then in rounds: every worker reads
/// the shares of the round's parts back from its spill and sends them to the
/// parts' writers, which sort and write them. A worker holds one part at a time.
fn partition(
    worker: &mut Worker,
    job: &StageJob,
    (read, losers): (ReadPings, HashSet<Order>),
    totals: &Counters,
) -> Counters {
    let index = worker.index();
    let peers = worker.peers();
    let slots = PartSlots::new(totals, job.partition_size);
    let mut counters = Counters::new();
    let ReadPings {
        spill,
        entries,
        batch_ids,
        ..
    } = read;
    let mut outgoing: Vec<Vec<(Spilled, ReportId)>> = vec![Vec::new(); slots.parts.len()];
    for e in entries.into_iter().filter(|e| !losers.contains(&e.order)) {
        let slot = slots.of(&batch_ids[e.batch as usize], &e.report_id);
        outgoing[slot].push((e.shares, e.report_id));
    }
    let mut spill = spill
        .finish()
        .unwrap_or_else(|e| fatal(format!("spill file: {e}")));

    // Keyed by part: a faster worker may already send the next round's rows
    // while this one still waits for the end of the current round.
    let received: Rc<RefCell<HashMap<u32, Vec<StagedReport>>>> = Rc::default();
    let mut reports = InputHandleVec::<u64, StagedReport>::new();
    let probe = ProbeHandle::<u64>::new();
    let sink = received.clone();
    worker.dataflow::<u64, _, _>(|scope| {
        consume_into(
            scope.input_from(&mut reports),
            ExchangePact::new(|r: &StagedReport| u64::from(r.slot)),
            "GatherParts",
            &probe,
            move |report| {
                sink.borrow_mut()
                    .entry(report.slot)
                    .or_default()
                    .push(report)
            },
        );
    });
    let total = slots.parts.len();
    for round in 0..total.div_ceil(peers) {
        for (slot, reports_of_slot) in outgoing
            .iter_mut()
            .enumerate()
            .skip(round * peers)
            .take(peers)
        {
            let mut mine = std::mem::take(reports_of_slot);
            // In file order, so the spill is read front to back.
            mine.sort_unstable_by_key(|(at, _)| *at);
            for (n, (at, report_id)) in mine.into_iter().enumerate() {
                let (share_a, share_b) = spill
                    .read(at)
                    .unwrap_or_else(|e| fatal(format!("spill file: {e}")));
                reports.send(StagedReport {
                    slot: slot as u32,
                    report_id,
                    share_a,
                    share_b,
                });
                if n % 64 == 63 {
                    worker.step();
                }
            }
        }
        reports.advance_to(round as u64 + 1);
        while probe.less_equal(&(round as u64)) {
            worker.step_or_park(None);
        }
        let slot = round * peers + index;
        if let Some(rows) = received.borrow_mut().remove(&(slot as u32)) {
            let (batch_id, part) = &slots.parts[slot];
            write_part_for_both(job, batch_id, *part, rows, &mut counters);
        }
    }
    counters
}

/// Sorts a part's reports by id and writes the part for both servers.
fn write_part_for_both(
    job: &StageJob,
    batch_id: &str,
    part: u32,
    mut rows: Vec<StagedReport>,
    counters: &mut Counters,
) {
    rows.sort_unstable_by_key(|r| r.report_id);
    let count = rows.len() as u64;
    let (shares_a, shares_b): (Vec<_>, Vec<_>) = rows
        .into_iter()
        .map(|r| {
            (
                (r.report_id, Bytes::from(r.share_a)),
                (r.report_id, Bytes::from(r.share_b)),
            )
        })
        .unzip();
    for (role, shares) in Role::BOTH.into_iter().zip([shares_a, shares_b]) {
        let name = StagedLayout::part_name(batch_id, part, job.output_format);
        let mut out = job
            .layout
            .server(role)
            .writer(&name)
            .unwrap_or_else(|e| fatal(e));
        write_part(job.output_format, batch_id, role, &shares, &mut out)
            .unwrap_or_else(|e| fatal(format!("{}/{name}: {e}", job.layout.server(role).url())));
        out.finish().unwrap_or_else(|e| fatal(e));
    }
    bump(counters, format!("entries/{batch_id}"), count);
    bump(counters, format!("parts/{batch_id}"), 1);
}

/// `_SUMMARY.json` then `_SUCCESS`, in every marker directory.
fn write_markers(job: &StageJob, summary: &Counters) -> Result<(), String> {
    let json = serde_json::json!({
        "date": job.date,
        "input": job.input.url(),
        "output_format": job.output_format,
        "counters": summary,
    });
    for marker in job.layout.markers() {
        marker
            .put(SUMMARY, serde_json::to_vec_pretty(&json).expect("JSON"))
            .map_err(|e| e.to_string())?;
        marker.put(SUCCESS, Vec::new()).map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_copy_by_input_order_wins_whatever_order_copies_arrive_in() {
        let mut ids = PingIds::default();
        for order in [(1, 0), (0, 5), (2, 3), (0, 7)] {
            ids.add(("ping".into(), order));
        }
        ids.add(("other".into(), (1, 1)));
        assert_eq!(ids.first["ping"], (0, 5));
        assert_eq!(ids.first["other"], (1, 1));
        ids.losers.sort();
        assert_eq!(ids.losers, vec![(0, 7), (1, 0), (2, 3)]);
    }
}
