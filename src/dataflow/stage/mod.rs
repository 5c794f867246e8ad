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

mod counts;
mod partition;
mod records;
mod scan;

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use timely::worker::Worker;

use super::{all_reduce, broadcast_from_first, on_disk, spread_by_size, Cluster, Error, Progress};
use crate::storage::input::InputFormat;
use crate::storage::location::{Location, StorageError};
use crate::storage::spill::{DiskSorter, Sortable, SortedRecords};
use crate::storage::staged::{StagedFormat, StagedLayout, SUCCESS, SUMMARY};
use crate::wire::config::BatchConfig;
use partition::partition;
use scan::scan;

pub use counts::{BatchCounts, StageCounts};

/// Everything a staging run needs; shared read-only by all workers.
pub struct StageJob {
    /// Only entries of these batch ids are staged; others are counted.
    pub config: BatchConfig,
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
    /// Write the date's markers even when no report was staged.
    pub allow_empty: bool,
    pub spill_dir: PathBuf,
    /// Told how reading goes (bytes read, pings); shared by the process's workers.
    pub progress: std::sync::Arc<dyn Progress>,
}

/// One input file, as listed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct InputFile {
    pub(super) rel: String,
    pub(super) size: u64,
    pub(super) format: InputFormat,
}

/// Records per sort run: a run of the largest records (ping ids) holds about 10 MB.
const SORT_RUN_LEN: usize = 1 << 17;

/// Runs the job on a timely cluster; returns the global counters.
pub fn run(job: StageJob, cluster: &Cluster) -> Result<StageCounts, Error> {
    super::execute(job, cluster, stage_worker)
}

fn stage_worker(worker: &mut Worker, job: &Arc<StageJob>) -> Result<StageCounts, Error> {
    let files = shared_listing(worker, job)?;
    if worker.index() == 0 {
        job.layout.clear()?;
    }
    let mut local = StageCounts::default();
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
    if worker.index() == 0 {
        written.files_listed = files.len() as u64;
    }
    // What was read, from the totals; what was written, summed now.
    let written = all_reduce(worker, &written);
    let summary = StageCounts {
        files_listed: written.files_listed,
        batches: totals
            .batches
            .iter()
            .map(|(batch_id, read)| {
                let parts = written.batches.get(batch_id).copied().unwrap_or_default();
                (
                    batch_id.clone(),
                    BatchCounts {
                        share_bytes: read.share_bytes,
                        ..parts
                    },
                )
            })
            .collect(),
        ..totals
    };
    let staged: u64 = summary.batches.values().map(|b| b.entries).sum();
    if staged == 0 && !job.allow_empty {
        return Err(Error::NothingStaged {
            date: job.date.clone(),
            pings: summary.pings_read,
            rejected: summary
                .rejected
                .iter()
                .map(|(reason, n)| format!("{}={n}", reason.reason()))
                .collect::<Vec<_>>()
                .join(" "),
        });
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
/// An input that is a single file is that file (name "").
fn list_inputs(job: &StageJob) -> Result<Vec<InputFile>, Error> {
    let mut listed = job.input.list()?;
    if listed.is_empty() {
        if let Some(size) = job.input.size("")? {
            listed.push((String::new(), size));
        }
    }
    let (mut other_dates, mut other_formats, mut not_dumps) = (Vec::new(), 0, 0);
    let files: Vec<InputFile> = listed
        .into_iter()
        .filter_map(|(rel, size)| {
            let name = if rel.is_empty() {
                job.input.url()
            } else {
                &rel
            };
            let Some(format) = InputFormat::of_path(name) else {
                not_dumps += 1;
                return None;
            };
            if job.input_format.is_some_and(|f| f != format) {
                other_formats += 1;
                return None;
            }
            // The sink layout starts with the submission date: skip other days.
            let first = rel.split('/').next().unwrap_or_default();
            if looks_like_date(first) && first != job.date {
                other_dates.push(first.to_string());
                return None;
            }
            Some(InputFile { rel, size, format })
        })
        .collect();
    if files.is_empty() {
        other_dates.dedup();
        let mut found = Vec::new();
        if !other_dates.is_empty() {
            found.push(format!("files of other dates ({})", other_dates.join(", ")));
        }
        if other_formats > 0 {
            found.push(format!(
                "{other_formats} files of other formats than --input-format"
            ));
        }
        if not_dumps > 0 {
            found.push(format!(
                "{not_dumps} files that are not .ndjson, .ndjson.gz, .parquet or .avro"
            ));
        }
        return Err(Error::NoInput {
            url: job.input.url().to_string(),
            date: job.date.clone(),
            found: if found.is_empty() {
                "nothing".into()
            } else {
                found.join(", ")
            },
        });
    }
    Ok(files)
}

fn looks_like_date(s: &str) -> bool {
    s.len() == 10 && chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok()
}

pub(super) fn sorter<T: Sortable + Ord>(job: &StageJob) -> Result<DiskSorter<T>, Error> {
    on_disk(DiskSorter::new(&job.spill_dir, SORT_RUN_LEN))
}

/// A sorter that an exchange feeds on the receiving worker, which finishes
/// it once everything was delivered. An operator cannot return an error,
/// so the first one waits here until then.
pub(super) struct FedSorter<T: Sortable + Ord> {
    pub(super) sorter: DiskSorter<T>,
    pub(super) error: Option<std::io::Error>,
}

type SharedSorter<T> = Rc<RefCell<Option<FedSorter<T>>>>;

pub(super) fn shared_sorter<T: Sortable + Ord>(job: &StageJob) -> Result<SharedSorter<T>, Error> {
    Ok(Rc::new(RefCell::new(Some(FedSorter {
        sorter: sorter(job)?,
        error: None,
    }))))
}

/// The exchange's delivery into a shared sorter.
pub(super) fn push_to<T: Sortable + Ord + 'static>(
    sorter: &SharedSorter<T>,
) -> impl FnMut(T) + 'static {
    let sorter = sorter.clone();
    move |record| {
        let mut fed = sorter.borrow_mut();
        let fed = fed.as_mut().expect("fed until finished");
        if fed.error.is_none() {
            fed.error = fed.sorter.push(record).err();
        }
    }
}

pub(super) fn finish<T: Sortable + Ord>(
    sorter: &SharedSorter<T>,
) -> Result<SortedRecords<T>, Error> {
    let fed = sorter.take().expect("finished once");
    match fed.error {
        Some(e) => Err(Error::Spill(e)),
        None => on_disk(fed.sorter.finish()),
    }
}

/// `_SUMMARY.json` then `_SUCCESS`, in every marker directory.
fn write_markers(job: &StageJob, summary: &StageCounts) -> Result<(), StorageError> {
    let json = serde_json::json!({
        "date": job.date,
        "input": job.input.url(),
        "output_format": job.output_format,
        "counters": summary.summary(),
    });
    for marker in job.layout.markers() {
        marker.put(SUMMARY, serde_json::to_vec_pretty(&json).expect("JSON"))?;
        marker.put(SUCCESS, Vec::new())?;
    }
    Ok(())
}
