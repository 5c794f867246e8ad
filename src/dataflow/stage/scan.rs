//! Phase 1, scan: read this worker's files, spill their shares and index
//! locally, and find the copies of each ping id that lost to an earlier one.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use timely::worker::Worker;

use super::counts::StageCounts;
use super::{finish, push_to, shared_sorter, InputFile, StageJob};
use crate::dataflow::{on_disk, route_hash, Error, Exchange, Merge};
use crate::storage::input::{read_records, InputBytes, RawPing};
use crate::storage::location::StorageError;
use crate::storage::spill::{RecordSpill, ShareSpill, SortedRecords, Spilled};
use crate::wire::envelope::sealed_len;
use crate::wire::ping::{decode_base64, parse_ping, PingRejection};
use crate::wire::report_id::{report_id, ReportId};

/// Where a ping was read: of several copies of a ping, the first in this
/// order (file index in the listing, then record index in the file) wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(super) struct Order {
    pub(super) file: u32,
    pub(super) record: u32,
}

/// A copy of a ping, as its id's owner sees it: the id and where the copy is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(super) struct PingCopy {
    pub(super) ping_id: String,
    pub(super) order: Order,
}

/// An entry as its reader indexes it: its ping's order, its batch (as a
/// number of [`ReadPings::batch_ids`]), its report id and where its shares are.
pub(super) struct ReadEntry {
    pub(super) order: Order,
    pub(super) batch: u32,
    pub(super) report_id: ReportId,
    pub(super) shares: Spilled,
}

/// What a worker keeps of the pings it read, in local files: their shares,
/// and an index of their entries in input order. The shares stay with their
/// reader until their part is written.
pub(super) struct ReadPings {
    pub(super) spill: ShareSpill,
    pub(super) index: RecordSpill<ReadEntry>,
    /// Batch ids, numbered in order of arrival, so entries hold a number.
    pub(super) batch_ids: Vec<String>,
    pub(super) batch_numbers: HashMap<String, u32>,
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

/// Of each ping id's copies, sorted by (id, order): every copy but the first.
pub(super) fn losing_copies(
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
pub(super) fn scan(
    worker: &mut Worker,
    job: &StageJob,
    files: &[InputFile],
    readers: &[usize],
    local: &mut StageCounts,
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
    job.progress.phase("staging");
    job.progress.expect(mine().map(|(_, f)| f.size).sum());
    for (file_index, file) in mine() {
        let url = job.input.object_url(&file.rel);
        // Read where it is, in ranges: Parquet's footer first, the other
        // formats front to back. The listing gave the size.
        let ranges = job.input.ranges(&file.rel, file.size);
        // Records are decoded and spilled as they are read, but they count
        // once the whole file was readable: an unreadable file is skipped
        // whole (its spilled shares stay unused), never in part.
        let mut entries = Vec::new();
        let mut file_copies = Vec::new();
        let mut counted = StageCounts::default();
        let mut record_index = 0u32;
        let mut spill_error = None;
        let outcome = read_records(
            &url,
            file.format,
            InputBytes::Ranges(ranges.clone()),
            |record| {
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
            },
        );
        if let Some(e) = spill_error {
            return Err(Error::Spill(e));
        }
        // A storage failure while reading is not the file's: a store that
        // stopped answering fails the run.
        if let Some(e) = ranges.failure() {
            if !skippable(job, &e) {
                return Err(e.into());
            }
            skip_file(job, local, file, &e);
            continue;
        }
        if let Err(e) = outcome {
            if !job.skip_unreadable {
                return Err(e.into());
            }
            skip_file(job, local, file, &e);
            continue;
        }
        local.files_read += 1;
        local.bytes_read += file.size;
        job.progress.advance(file.size, counted.pings_read);
        local.absorb(counted);
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

/// Whether `--skip-unreadable` skips a file over this storage error. A
/// local file this run may not read, or one gone since the listing, is that
/// file's problem. Any other storage error is the run's, and so is a cloud
/// store's refusal: an expired credential would otherwise skip every file
/// after it.
fn skippable(job: &StageJob, error: &StorageError) -> bool {
    job.skip_unreadable
        && match error {
            StorageError::NotFound { .. } => true,
            StorageError::Denied { .. } => job.input.is_local_files(),
            _ => false,
        }
}

/// Counts a file that `--skip-unreadable` skips.
fn skip_file(
    job: &StageJob,
    local: &mut StageCounts,
    file: &InputFile,
    reason: &dyn std::fmt::Display,
) {
    tracing::warn!("skipping unreadable file: {reason}");
    local.files_unreadable += 1;
    job.progress.advance(file.size, 0);
}

/// Sends the orders of copies that lost back to the workers that read them,
/// counting them; returns this worker's, sorted.
pub(super) fn return_losers(
    worker: &mut Worker,
    job: &StageJob,
    losers: impl Iterator<Item = std::io::Result<Order>>,
    readers: Vec<usize>,
    local: &mut StageCounts,
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
    local.duplicates_dropped += count;
    returned.close_and_wait(worker);
    finish(&mine)
}

/// Decodes one record of a dump and spills its shares; returns its ping id,
/// or `None` (counted by reason) for a record that is not a ping.
pub(super) fn read_ping(
    job: &StageJob,
    read: &mut ReadPings,
    record: Result<RawPing, PingRejection>,
    order: Order,
    entries: &mut Vec<ReadEntry>,
    counts: &mut StageCounts,
) -> std::io::Result<Option<String>> {
    let parsed = record.and_then(|raw| {
        if raw.submission_date != job.date {
            return Err(PingRejection::DateOutside);
        }
        parse_ping(&raw.body)
    });
    let ping = match parsed {
        Ok(ping) => ping,
        Err(r) => {
            counts.reject(r);
            return Ok(None);
        }
    };
    counts.pings_read += 1;
    for bad in &ping.bad_entries {
        counts.reject(*bad);
    }
    let mut seen: HashMap<&str, u32> = HashMap::new();
    for e in &ping.entries {
        let k = seen.entry(&e.batch_id).or_default();
        let number = *k;
        *k += 1;
        // A client cannot create batches, files or parts at will.
        let Some(spec) = job.config.get(&e.batch_id) else {
            counts.reject(PingRejection::UnknownBatchId);
            continue;
        };
        let limits = spec.share_lens.map(|n| share_limit(&e.batch_id, n));
        // Checked on the text first: an oversized share is never decoded.
        if e.share_a.len() > base64_len(limits[0]) || e.share_b.len() > base64_len(limits[1]) {
            counts.reject(PingRejection::ShareTooLarge);
            continue;
        }
        let (Some(a), Some(b)) = (decode_base64(&e.share_a), decode_base64(&e.share_b)) else {
            counts.reject(PingRejection::BadShareBase64);
            continue;
        };
        if a.len() > limits[0] || b.len() > limits[1] {
            counts.reject(PingRejection::ShareTooLarge);
            continue;
        }
        counts.batch(&e.batch_id).share_bytes += (a.len() + b.len()) as u64;
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

/// The largest envelope `stage` takes for a share of `plaintext_len` bytes
/// (for prio1, the longest packet): four times that, and 4 KiB more, so
/// that a client's slightly different encoding still reaches the servers,
/// whose verification rejects anything that is not a share of the batch's
/// VDAF.
fn share_limit(batch_id: &str, plaintext_len: usize) -> usize {
    4 * sealed_len(batch_id, plaintext_len) + 4096
}

/// The longest base64 text of `bytes` bytes, with padding and a little
/// whitespace (which the decoder trims).
fn base64_len(bytes: usize) -> usize {
    bytes.div_ceil(3) * 4 + 16
}
