//! The staging job: an ingestion dump becomes per-server, per-batch-id
//! partitions, replacing the old Spark job.
//!
//! Phases, each a dataflow that every worker runs to completion in turn:
//! 0. listing: worker 0 lists the input and all workers take its sorted
//!    list, spread over them by file size;
//! 1. scan: workers read their share of the input files, spill each
//!    entry's shares to a local file, index the entry (its report id and
//!    where its shares are) in another, and send each ping's id with its
//!    (file, record) order to the worker that owns the id. Owners sort the
//!    ids they get on local disk, and send every copy but an id's first back
//!    to its reader as a loser;
//! 2. totals: share bytes per batch id are summed across workers, which fixes
//!    how many parts each batch gets;
//! 3. partition: every worker reads its index once, drops the losers and
//!    sorts the rest by part on local disk. Then one round of parts at a
//!    time, it reads the round's shares back from its spill and routes them
//!    to the part's writer, which sorts and writes the part for both servers;
//! 4. summary: counters are summed and worker 0 writes the markers.
//!
//! Each share is spilled and read back once, and crosses between workers
//! (or machines) once, on its way to its part's writer. Whatever grows with
//! the number of pings (shares, the index, ping ids, losers) waits in local
//! files, so memory holds one input file, one part and a few sort runs per
//! worker, however many pings there are.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::rc::Rc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use timely::worker::Worker;

use super::{
    all_reduce, broadcast_from_first, bump, on_disk, route_hash, spread_by_size, Cluster, Error,
    Exchange,
};
use crate::storage::input::{read_records, InputFormat, RawPing};
use crate::storage::location::{Location, StorageError};
use crate::storage::spill::{
    read_array, DiskSorter, RecordSpill, ShareSpill, Sortable, SortedRecords, Spilled,
    SpilledRecords,
};
use crate::storage::staged::{write_part, StagedFormat, StagedLayout, SUCCESS, SUMMARY};
use crate::wire::ping::{decode_base64, parse_ping, PingRejection};
use crate::wire::report_id::{report_id, ReportId, REPORT_ID_LEN};
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
    /// Told how reading goes; shared by the process's workers.
    pub progress: Box<dyn ReadProgress>,
}

/// How reading the input goes, for whoever shows it (the cli's progress bar).
pub trait ReadProgress: Send + Sync {
    /// A worker of this process will read `bytes` more.
    fn expect(&self, bytes: u64);
    /// A worker of this process read a file of `bytes` with `pings` pings.
    fn file_done(&self, bytes: u64, pings: u64);
}

/// One input file, as listed.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct InputFile {
    rel: String,
    size: u64,
    format: InputFormat,
}

/// Records per sort run: a run of the largest records (ping ids) holds about 10 MB.
const SORT_RUN_LEN: usize = 1 << 17;

/// Where a ping was read: of several copies of a ping, the first in this
/// order (file index in the listing, then record index in the file) wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct Order {
    file: u32,
    record: u32,
}

/// A copy of a ping, as its id's owner sees it: the id and where the copy is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct PingCopy {
    ping_id: String,
    order: Order,
}

/// An entry as its reader indexes it: its ping's order, its batch (as a
/// number of [`ReadPings::batch_ids`]), its report id and where its shares are.
struct ReadEntry {
    order: Order,
    batch: u32,
    report_id: ReportId,
    shares: Spilled,
}

/// An entry on its way to its part: sorted by part, then by place in the spill.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct RoutedEntry {
    slot: u32,
    shares: Spilled,
    report_id: ReportId,
}

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
pub fn run(job: StageJob, cluster: &Cluster) -> Result<Counters, Error> {
    super::execute(job, cluster, stage_worker)
}

fn stage_worker(worker: &mut Worker, job: &StageJob) -> Result<Counters, Error> {
    let files = shared_listing(worker, job)?;
    if worker.index() == 0 {
        job.layout.clear()?;
    }
    let mut local = Counters::new();
    let started = std::time::Instant::now();
    let sizes: Vec<u64> = files.iter().map(|f| f.size).collect();
    let readers = spread_by_size(&sizes, worker.peers());
    let read = scan(worker, job, &files, &readers, &mut local)?;
    tracing::debug!(
        worker = worker.index(),
        seconds = started.elapsed().as_secs_f64(),
        "scan done"
    );
    let totals = all_reduce(worker, &local);
    let mut written = partition(worker, job, read, &totals)?;
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
        write_markers(job, &summary)?;
    }
    Ok(summary)
}

/// Worker 0 lists the input and every worker takes that list, so that all
/// split the same files among them even if the input changes meanwhile.
/// A listing error reaches the other workers (and processes) as its message.
fn shared_listing(worker: &mut Worker, job: &StageJob) -> Result<Vec<InputFile>, Error> {
    let (listed, error) = match (worker.index() == 0).then(|| list_inputs(job)) {
        Some(Ok(files)) => (files.into_iter().map(Ok).collect(), None),
        Some(Err(e)) => (vec![Err(e.to_string())], Some(e)),
        None => (Vec::new(), None),
    };
    let shared = broadcast_from_first(worker, listed);
    if let Some(e) = error {
        return Err(e);
    }
    shared
        .into_iter()
        .collect::<Result<_, _>>()
        .map_err(Error::Remote)
}

/// Lists the input, sorted, keeping dump files of the requested date.
fn list_inputs(job: &StageJob) -> Result<Vec<InputFile>, Error> {
    let listed = job.input.list()?;
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
        return Err(Error::NoInput {
            url: job.input.url().to_string(),
        });
    }
    Ok(files)
}

fn looks_like_date(s: &str) -> bool {
    s.len() == 10 && chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok()
}

/// What a worker keeps of the pings it read, in local files: their shares,
/// and an index of their entries in input order. The shares stay with their
/// reader until their part is written.
struct ReadPings {
    spill: ShareSpill,
    index: RecordSpill<ReadEntry>,
    /// Batch ids, numbered in order of arrival, so entries hold a number.
    batch_ids: Vec<String>,
    batch_numbers: HashMap<String, u32>,
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

fn sorter<T: Sortable + Ord>(job: &StageJob) -> Result<DiskSorter<T>, Error> {
    on_disk(DiskSorter::new(&job.spill_dir, SORT_RUN_LEN))
}

/// A sorter that an exchange feeds on the receiving worker, which finishes
/// it once everything was delivered. An operator cannot return an error,
/// so the first one waits here until then.
struct FedSorter<T: Sortable + Ord> {
    sorter: DiskSorter<T>,
    error: Option<std::io::Error>,
}

type SharedSorter<T> = Rc<RefCell<Option<FedSorter<T>>>>;

fn shared_sorter<T: Sortable + Ord>(job: &StageJob) -> Result<SharedSorter<T>, Error> {
    Ok(Rc::new(RefCell::new(Some(FedSorter {
        sorter: sorter(job)?,
        error: None,
    }))))
}

/// The exchange's delivery into a shared sorter.
fn push_to<T: Sortable + Ord + 'static>(sorter: &SharedSorter<T>) -> impl FnMut(T) + 'static {
    let sorter = sorter.clone();
    move |record| {
        let mut fed = sorter.borrow_mut();
        let fed = fed.as_mut().expect("fed until finished");
        if fed.error.is_none() {
            fed.error = fed.sorter.push(record).err();
        }
    }
}

fn finish<T: Sortable + Ord>(sorter: &SharedSorter<T>) -> Result<SortedRecords<T>, Error> {
    let fed = sorter.take().expect("finished once");
    match fed.error {
        Some(e) => Err(Error::Spill(e)),
        None => on_disk(fed.sorter.finish()),
    }
}

/// Of each ping id's copies, sorted by (id, order): every copy but the first.
fn losing_copies(
    sorted: impl Iterator<Item = std::io::Result<PingCopy>>,
) -> impl Iterator<Item = std::io::Result<Order>> {
    let mut first: Option<String> = None;
    sorted.filter_map(move |copy| match copy {
        Err(e) => Some(Err(e)),
        Ok(copy) if first.as_deref() == Some(copy.ping_id.as_str()) => Some(Ok(copy.order)),
        Ok(copy) => {
            first = Some(copy.ping_id);
            None
        }
    })
}

/// Phase 1: read this worker's files, spill their shares and index locally,
/// and send each ping's id to the worker that owns it. Returns what was read
/// and the orders of this worker's copies that lost to an earlier copy.
fn scan(
    worker: &mut Worker,
    job: &StageJob,
    files: &[InputFile],
    readers: &[usize],
    local: &mut Counters,
) -> Result<(ReadPings, SortedRecords<Order>), Error> {
    let index = worker.index();
    let mut read = ReadPings {
        spill: on_disk(ShareSpill::create(&job.spill_dir))?,
        index: on_disk(RecordSpill::create(&job.spill_dir, "index-"))?,
        batch_ids: Vec::new(),
        batch_numbers: HashMap::new(),
    };
    let ids = shared_sorter::<PingCopy>(job)?;
    let mut copies = Exchange::new(
        worker,
        "OwnPingIds",
        |copy: &PingCopy| route_hash(&[copy.ping_id.as_bytes()]),
        push_to(&ids),
    );
    // In listing order, so the index is in input order too.
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
        job.input.read_into(&file.rel, &mut data)?;
        // Records are decoded and spilled as they are read, but they count
        // once the whole file was readable: an unreadable file is skipped
        // whole (its spilled shares stay unused), never in part.
        let mut entries = Vec::new();
        let mut file_copies = Vec::new();
        let mut counted = Counters::new();
        let mut record_index = 0u32;
        let mut spill_error = None;
        let outcome = read_records(&url, file.format, &mut data, |record| {
            let order = Order {
                file: file_index as u32,
                record: record_index,
            };
            record_index += 1;
            if spill_error.is_some() {
                return;
            }
            match read_ping(job, &mut read, record, order, &mut entries, &mut counted) {
                Ok(Some(ping_id)) => file_copies.push(PingCopy { ping_id, order }),
                Ok(None) => {}
                Err(e) => spill_error = Some(e),
            }
        });
        if let Some(e) = spill_error {
            return Err(Error::Spill(e));
        }
        if let Err(e) = outcome {
            if !job.skip_unreadable {
                return Err(e.into());
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
        for entry in &entries {
            on_disk(read.index.append(entry))?;
        }
        for copy in file_copies {
            copies.send(copy);
        }
        worker.step();
    }
    copies.close_and_wait(worker);
    let losers = losing_copies(finish(&ids)?);
    let mine = return_losers(worker, job, losers, readers.to_vec(), local)?;
    Ok((read, mine))
}

/// Sends the orders of copies that lost back to the workers that read them,
/// counting them; returns this worker's, sorted.
fn return_losers(
    worker: &mut Worker,
    job: &StageJob,
    losers: impl Iterator<Item = std::io::Result<Order>>,
    readers: Vec<usize>,
    local: &mut Counters,
) -> Result<SortedRecords<Order>, Error> {
    let mine = shared_sorter::<Order>(job)?;
    let mut returned = Exchange::new(
        worker,
        "ReturnLosers",
        move |order: &Order| readers[order.file as usize] as u64,
        push_to(&mine),
    );
    let mut count = 0u64;
    for order in losers {
        returned.send(on_disk(order)?);
        count += 1;
        if count.is_multiple_of(1024) {
            worker.step();
        }
    }
    bump(local, "duplicates_dropped", count);
    returned.close_and_wait(worker);
    finish(&mine)
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
) -> std::io::Result<Option<String>> {
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
            return Ok(None);
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
        let shares = read.spill.append(&a, &b)?;
        entries.push(ReadEntry {
            order,
            batch: read.batch_number(&e.batch_id),
            report_id: report_id(&job.secret, &ping.id, &e.batch_id, number),
            shares,
        });
    }
    Ok(Some(ping.id))
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

/// Phase 3a: every entry this worker read, but those of losing copies,
/// sorted by part (then by place in the spill) on local disk.
fn route_entries(
    job: &StageJob,
    index: SpilledRecords<ReadEntry>,
    losers: SortedRecords<Order>,
    batch_ids: &[String],
    slots: &PartSlots,
) -> Result<SortedRecords<RoutedEntry>, Error> {
    let mut losers = losers.peekable();
    let mut routed = sorter(job)?;
    // Both are in input order, so one pass over each finds the losers.
    for entry in index {
        let entry = on_disk(entry)?;
        // An error is taken too, to be raised.
        while let Some(lost) =
            losers.next_if(|lost| lost.as_ref().map_or(true, |l| *l < entry.order))
        {
            on_disk(lost)?;
        }
        // Not taken: all entries of a ping share its order.
        if matches!(losers.peek(), Some(Ok(lost)) if *lost == entry.order) {
            continue;
        }
        let slot = slots.of(&batch_ids[entry.batch as usize], &entry.report_id);
        on_disk(routed.push(RoutedEntry {
            slot: slot as u32,
            shares: entry.shares,
            report_id: entry.report_id,
        }))?;
    }
    on_disk(routed.finish())
}

/// Phase 3: route entries to parts, then in rounds: every worker reads the
/// shares of the round's parts back from its spill and sends them to the
/// parts' writers, which sort and write them. A worker holds one part at a time.
fn partition(
    worker: &mut Worker,
    job: &StageJob,
    (read, losers): (ReadPings, SortedRecords<Order>),
    totals: &Counters,
) -> Result<Counters, Error> {
    let index = worker.index();
    let peers = worker.peers();
    let slots = PartSlots::new(totals, job.partition_size);
    let mut counters = Counters::new();
    let ReadPings {
        spill,
        index: entries,
        batch_ids,
        ..
    } = read;
    let routed = route_entries(job, on_disk(entries.finish())?, losers, &batch_ids, &slots)?;
    let mut routed = routed.peekable();
    let mut spill = on_disk(spill.finish())?;

    // Keyed by part: a faster worker may already send the next round's rows
    // while this one still waits for the end of the current round.
    let received: Rc<RefCell<HashMap<u32, Vec<StagedReport>>>> = Rc::default();
    let sink = received.clone();
    let mut reports = Exchange::new(
        worker,
        "GatherParts",
        |r: &StagedReport| u64::from(r.slot),
        move |report: StagedReport| {
            sink.borrow_mut()
                .entry(report.slot)
                .or_default()
                .push(report)
        },
    );
    let total = slots.parts.len();
    for round in 0..total.div_ceil(peers) {
        let round_end = ((round + 1) * peers) as u32;
        let mut sent = 0u64;
        // In spill order within each part, so the spill is read front to back;
        // an error is taken too, to be raised.
        while let Some(entry) = routed.next_if(|e| e.as_ref().map_or(true, |e| e.slot < round_end))
        {
            let entry = on_disk(entry)?;
            let (share_a, share_b) = on_disk(spill.read(entry.shares))?;
            reports.send(StagedReport {
                slot: entry.slot,
                report_id: entry.report_id,
                share_a,
                share_b,
            });
            sent += 1;
            if sent.is_multiple_of(64) {
                worker.step();
            }
        }
        reports.advance_to(round as u64 + 1);
        while !reports.delivered_before(round as u64 + 1) {
            worker.step_or_park(None);
        }
        let slot = round * peers + index;
        let rows = received.borrow_mut().remove(&(slot as u32));
        if let Some(rows) = rows {
            let (batch_id, part) = &slots.parts[slot];
            write_part_for_both(job, batch_id, *part, rows, &mut counters)?;
        }
    }
    Ok(counters)
}

/// Sorts a part's reports by id and writes the part for both servers.
fn write_part_for_both(
    job: &StageJob,
    batch_id: &str,
    part: u32,
    mut rows: Vec<StagedReport>,
    counters: &mut Counters,
) -> Result<(), Error> {
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
        let server = job.layout.server(role);
        let mut out = server.writer(&name)?;
        write_part(job.output_format, batch_id, role, &shares, &mut out).map_err(|source| {
            StorageError::Write {
                url: format!("{}/{name}", server.url()),
                source,
            }
        })?;
        out.finish()?;
    }
    bump(counters, format!("entries/{batch_id}"), count);
    bump(counters, format!("parts/{batch_id}"), 1);
    Ok(())
}

/// `_SUMMARY.json` then `_SUCCESS`, in every marker directory.
fn write_markers(job: &StageJob, summary: &Counters) -> Result<(), StorageError> {
    let json = serde_json::json!({
        "date": job.date,
        "input": job.input.url(),
        "output_format": job.output_format,
        "counters": summary,
    });
    for marker in job.layout.markers() {
        marker.put(SUMMARY, serde_json::to_vec_pretty(&json).expect("JSON"))?;
        marker.put(SUCCESS, Vec::new())?;
    }
    Ok(())
}

impl Sortable for Order {
    fn encode<W: Write>(&self, out: &mut W) -> std::io::Result<()> {
        out.write_all(&self.file.to_le_bytes())?;
        out.write_all(&self.record.to_le_bytes())
    }

    fn decode<R: Read>(input: &mut R) -> std::io::Result<Self> {
        Ok(Order {
            file: u32::from_le_bytes(read_array(input)?),
            record: u32::from_le_bytes(read_array(input)?),
        })
    }
}

impl Sortable for PingCopy {
    fn encode<W: Write>(&self, out: &mut W) -> std::io::Result<()> {
        let len = u32::try_from(self.ping_id.len()).map_err(std::io::Error::other)?;
        out.write_all(&len.to_le_bytes())?;
        out.write_all(self.ping_id.as_bytes())?;
        self.order.encode(out)
    }

    fn decode<R: Read>(input: &mut R) -> std::io::Result<Self> {
        let mut ping_id = vec![0; u32::from_le_bytes(read_array(input)?) as usize];
        input.read_exact(&mut ping_id)?;
        Ok(PingCopy {
            ping_id: String::from_utf8(ping_id).map_err(std::io::Error::other)?,
            order: Order::decode(input)?,
        })
    }
}

impl Sortable for ReadEntry {
    fn encode<W: Write>(&self, out: &mut W) -> std::io::Result<()> {
        self.order.encode(out)?;
        out.write_all(&self.batch.to_le_bytes())?;
        out.write_all(&self.report_id)?;
        self.shares.encode(out)
    }

    fn decode<R: Read>(input: &mut R) -> std::io::Result<Self> {
        Ok(ReadEntry {
            order: Order::decode(input)?,
            batch: u32::from_le_bytes(read_array(input)?),
            report_id: read_array::<REPORT_ID_LEN>(input)?,
            shares: Spilled::decode(input)?,
        })
    }
}

impl Sortable for RoutedEntry {
    fn encode<W: Write>(&self, out: &mut W) -> std::io::Result<()> {
        out.write_all(&self.slot.to_le_bytes())?;
        self.shares.encode(out)?;
        out.write_all(&self.report_id)
    }

    fn decode<R: Read>(input: &mut R) -> std::io::Result<Self> {
        Ok(RoutedEntry {
            slot: u32::from_le_bytes(read_array(input)?),
            shares: Spilled::decode(input)?,
            report_id: read_array::<REPORT_ID_LEN>(input)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(ping_id: &str, file: u32, record: u32) -> PingCopy {
        PingCopy {
            ping_id: ping_id.into(),
            order: Order { file, record },
        }
    }

    #[test]
    fn the_first_copy_by_input_order_wins_whatever_order_copies_arrive_in() {
        let dir = tempfile::tempdir().unwrap();
        // Runs of two records, so that copies of one id sit in different runs.
        let mut sorter = DiskSorter::new(dir.path(), 2).unwrap();
        for c in [
            copy("ping", 1, 0),
            copy("other", 1, 1),
            copy("ping", 0, 5),
            copy("ping", 2, 3),
            copy("third", 0, 0),
            copy("ping", 0, 7),
            copy("other", 0, 9),
        ] {
            sorter.push(c).unwrap();
        }
        let sorted = sorter.finish().unwrap();
        let mut losers: Vec<Order> = losing_copies(sorted).map(Result::unwrap).collect();
        losers.sort();
        let order = |file, record| Order { file, record };
        assert_eq!(
            losers,
            vec![order(0, 7), order(1, 0), order(1, 1), order(2, 3)]
        );
    }

    fn round_trip<T: Sortable>(record: &T) -> T {
        let mut bytes = Vec::new();
        record.encode(&mut bytes).unwrap();
        let mut input = bytes.as_slice();
        let back = T::decode(&mut input).unwrap();
        assert!(input.is_empty(), "decode reads exactly what encode wrote");
        back
    }

    #[test]
    fn records_spilled_to_disk_read_back_as_written() {
        let order = Order { file: 3, record: 9 };
        let shares = Spilled::decode(&mut &(1u8..=16).collect::<Vec<_>>()[..]).unwrap();
        let report_id: ReportId = std::array::from_fn(|i| i as u8 * 3);
        assert_eq!(round_trip(&order), order);
        let ping = copy("ping-\u{e9}", 1, 2);
        assert_eq!(round_trip(&ping), ping);
        let entry = round_trip(&ReadEntry {
            order,
            batch: 2,
            report_id,
            shares,
        });
        assert_eq!(
            (entry.order, entry.batch, entry.report_id, entry.shares),
            (order, 2, report_id, shares)
        );
        let routed = RoutedEntry {
            slot: 7,
            shares,
            report_id,
        };
        assert_eq!(round_trip(&routed), routed);
    }
}
