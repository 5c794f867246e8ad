//! The staging job: an ingestion dump becomes per-server, per-batch-id
//! partitions, replacing the old Spark job.
//!
//! Phases, each a dataflow that every worker runs to completion in turn:
//! 1. scan: workers read their share of the sorted input files and route
//!    each ping to the worker that owns its id, which spills it to local disk
//!    and remembers the first copy (by file and record order);
//! 2. totals: share bytes per batch id are summed across workers, which fixes
//!    how many parts each batch gets;
//! 3. partition: owners replay their spill, keep first copies, assign report
//!    ids and parts, and route each report to the part's owner, which spills
//!    it and finally writes the part for both servers, sorted by report id;
//! 4. summary: counters are summed and worker 0 writes the markers.
//!
//! Memory holds the ping-id set and one part at a time, not the dataset.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Exchange as ExchangePact;
use timely::dataflow::operators::Input;
use timely::dataflow::{InputHandleVec, ProbeHandle};
use timely::worker::Worker;

use super::{all_reduce, bump, consume_into, fatal, route_hash, run_until_done};
use crate::storage::input::{read_records, InputFormat};
use crate::storage::location::Location;
use crate::storage::spill::{SpillReader, SpillWriter};
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
    pub progress: indicatif::ProgressBar,
}

/// One input file, as listed.
#[derive(Debug, Clone)]
struct InputFile {
    rel: String,
    size: u64,
    format: InputFormat,
}

/// A decoded ping on its way to the worker that owns its id.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct PingRecord {
    ping_id: String,
    /// (file index, record index): the first copy in this order wins.
    order: (u32, u32),
    entries: Vec<PingEntry>,
}

/// One prio entry of a ping. Shares are `serde_bytes`, so spill files and
/// exchanges copy them whole instead of (de)serializing byte by byte.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct PingEntry {
    batch_id: String,
    /// Numbers the ping's entries of this batch id, from 0.
    k: u32,
    #[serde(with = "serde_bytes")]
    share_a: Vec<u8>,
    #[serde(with = "serde_bytes")]
    share_b: Vec<u8>,
}

/// A report on its way to the worker that owns its part.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct StagedReport {
    batch_id: String,
    part: u32,
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
    let files = list_inputs(job).unwrap_or_else(|e| fatal(e));
    if worker.index() == 0 {
        job.layout.clear().unwrap_or_else(|e| fatal(e));
    }
    let mut local = Counters::new();
    let started = std::time::Instant::now();
    let owner = scan(worker, job, &files, &mut local);
    tracing::debug!(
        worker = worker.index(),
        seconds = started.elapsed().as_secs_f64(),
        "scan done"
    );
    let totals = all_reduce(worker, &local);
    let mut written = partition(worker, job, owner, &totals);
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

/// Lists the input once, sorted, keeping dump files of the requested date.
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

/// What the owner of a set of ping ids keeps: the spilled records and, per
/// id, the order of the first copy.
struct PingOwner {
    spill: SpillWriter,
    first: HashMap<String, (u32, u32)>,
}

impl PingOwner {
    fn add(&mut self, record: PingRecord) {
        self.spill
            .append(&record)
            .unwrap_or_else(|e| fatal(format!("spill file: {e}")));
        self.first
            .entry(record.ping_id)
            .and_modify(|o| *o = (*o).min(record.order))
            .or_insert(record.order);
    }
}

/// Phase 1: read this worker's files and route pings to their id's owner.
fn scan(
    worker: &mut Worker,
    job: &StageJob,
    files: &[InputFile],
    local: &mut Counters,
) -> Rc<RefCell<PingOwner>> {
    let index = worker.index();
    let peers = worker.peers();
    let spill_path = job.spill_dir.join(format!("pings-{index}.bin"));
    let owner = Rc::new(RefCell::new(PingOwner {
        spill: SpillWriter::create(&spill_path)
            .unwrap_or_else(|e| fatal(format!("{}: {e}", spill_path.display()))),
        first: HashMap::new(),
    }));
    let mut pings = InputHandleVec::<u64, PingRecord>::new();
    let probe = ProbeHandle::<u64>::new();
    let sink = owner.clone();
    worker.dataflow::<u64, _, _>(|scope| {
        let pact = ExchangePact::new(|r: &PingRecord| route_hash(&[r.ping_id.as_bytes()]));
        consume_into(
            scope.input_from(&mut pings),
            pact,
            "OwnPings",
            &probe,
            move |record| sink.borrow_mut().add(record),
        );
    });
    for (file_index, file) in files.iter().enumerate().filter(|(i, _)| i % peers == index) {
        let url = format!("{}/{}", job.input.url(), file.rel);
        let data = job.input.get(&file.rel).unwrap_or_else(|e| fatal(e));
        let mut records = Vec::new();
        if let Err(e) = read_records(&url, file.format, data, |r| records.push(r)) {
            if !job.skip_unreadable {
                fatal(format!(
                    "{e}\n(pass --skip-unreadable to count such files and go on)"
                ));
            }
            tracing::warn!("skipping unreadable file: {e}");
            bump(local, "files_unreadable", 1);
            job.progress.inc(1);
            continue;
        }
        bump(local, "files_read", 1);
        bump(local, "bytes_read", file.size);
        for (record_index, record) in records.into_iter().enumerate() {
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
                    bump(local, format!("rejected/{}", r.reason()), 1);
                    continue;
                }
            };
            bump(local, "pings_read", 1);
            for bad in &ping.bad_entries {
                bump(local, format!("rejected/{}", bad.reason()), 1);
            }
            let mut entries = Vec::with_capacity(ping.entries.len());
            let mut seen: HashMap<String, u32> = HashMap::new();
            for e in ping.entries {
                let k = seen.entry(e.batch_id.clone()).or_default();
                let number = *k;
                *k += 1;
                let (Some(a), Some(b)) = (decode_base64(&e.share_a), decode_base64(&e.share_b))
                else {
                    bump(local, "rejected/bad_share_base64", 1);
                    continue;
                };
                bump(
                    local,
                    format!("share_bytes/{}", e.batch_id),
                    (a.len() + b.len()) as u64,
                );
                entries.push(PingEntry {
                    batch_id: e.batch_id,
                    k: number,
                    share_a: a,
                    share_b: b,
                });
            }
            pings.send(PingRecord {
                ping_id: ping.id,
                order: (file_index as u32, record_index as u32),
                entries,
            });
        }
        job.progress.inc(1);
        worker.step();
    }
    pings.close();
    run_until_done(worker, &probe);
    owner
}

/// Parts per batch id: enough that each holds about `partition_size` share bytes.
fn parts_per_batch(totals: &Counters, partition_size: u64) -> HashMap<String, u32> {
    totals
        .iter()
        .filter_map(|(k, bytes)| {
            let batch = k.strip_prefix("share_bytes/")?;
            let parts = bytes
                .div_ceil(partition_size.max(1))
                .clamp(1, u64::from(u32::MAX));
            Some((batch.to_string(), parts as u32))
        })
        .collect()
}

fn part_hash(batch_id: &str, part: u32) -> u64 {
    route_hash(&[batch_id.as_bytes(), &part.to_be_bytes()])
}

/// The worker that gathers and writes each part: round-robin over all
/// (batch id, part) pairs in order, so every worker writes its share of parts.
fn part_owners(parts: &HashMap<String, u32>, peers: usize) -> HashMap<String, Vec<u64>> {
    let mut batches: Vec<_> = parts.iter().collect();
    batches.sort();
    let mut next = 0u64;
    batches
        .into_iter()
        .map(|(batch, &n)| {
            let owners = (0..n)
                .map(|_| {
                    next += 1;
                    (next - 1) % peers as u64
                })
                .collect();
            (batch.clone(), owners)
        })
        .collect()
}

/// The part owner's spill files, one per (batch id, part).
type PartSpills = BTreeMap<(String, u32), SpillWriter>;

/// Phase 3: assign report ids and parts, gather parts, write them.
fn partition(
    worker: &mut Worker,
    job: &StageJob,
    owner: Rc<RefCell<PingOwner>>,
    totals: &Counters,
) -> Counters {
    let index = worker.index();
    let peers = worker.peers();
    let parts = parts_per_batch(totals, job.partition_size);
    let mut counters = Counters::new();
    let spills: Rc<RefCell<PartSpills>> = Rc::new(RefCell::new(BTreeMap::new()));
    let mut reports = InputHandleVec::<u64, StagedReport>::new();
    let probe = ProbeHandle::<u64>::new();
    let sink = spills.clone();
    let spill_dir = job.spill_dir.clone();
    worker.dataflow::<u64, _, _>(|scope| {
        let owners = part_owners(&parts, peers);
        let pact = ExchangePact::new(move |r: &StagedReport| owners[&r.batch_id][r.part as usize]);
        consume_into(
            scope.input_from(&mut reports),
            pact,
            "GatherParts",
            &probe,
            move |report| {
                let key = (report.batch_id.clone(), report.part);
                let mut spills = sink.borrow_mut();
                let spill = spills.entry(key).or_insert_with(|| {
                    let path = spill_dir.join(format!(
                        "part-{index}-{:016x}.bin",
                        part_hash(&report.batch_id, report.part)
                    ));
                    SpillWriter::create(&path)
                        .unwrap_or_else(|e| fatal(format!("{}: {e}", path.display())))
                });
                spill
                    .append(&report)
                    .unwrap_or_else(|e| fatal(format!("spill file: {e}")));
            },
        );
    });

    let PingOwner { spill, first } = Rc::try_unwrap(owner)
        .ok()
        .expect("scan is finished")
        .into_inner();
    bump(
        &mut counters,
        "duplicates_dropped",
        spill.records() - first.len() as u64,
    );
    let replay: SpillReader<PingRecord> = spill
        .finish()
        .unwrap_or_else(|e| fatal(format!("spill file: {e}")));
    for (n, record) in replay.enumerate() {
        let record = record.unwrap_or_else(|e| fatal(format!("spill file: {e}")));
        if first.get(&record.ping_id) != Some(&record.order) {
            continue;
        }
        for PingEntry {
            batch_id,
            k,
            share_a,
            share_b,
        } in record.entries
        {
            let id = report_id(&job.secret, &record.ping_id, &batch_id, k);
            let part = (u64::from_be_bytes(id[..8].try_into().expect("8 bytes"))
                % u64::from(parts[&batch_id])) as u32;
            reports.send(StagedReport {
                batch_id,
                part,
                report_id: id,
                share_a,
                share_b,
            });
        }
        if n % 64 == 63 {
            worker.step();
        }
    }
    reports.close();
    run_until_done(worker, &probe);
    tracing::debug!(worker = index, "parts gathered");

    for ((batch_id, part), spill) in spills.take() {
        let mut rows: Vec<StagedReport> = spill
            .finish()
            .unwrap_or_else(|e| fatal(format!("spill file: {e}")))
            .collect::<std::io::Result<_>>()
            .unwrap_or_else(|e| fatal(format!("spill file: {e}")));
        rows.sort_unstable_by_key(|r| r.report_id);
        for role in Role::BOTH {
            let shares: Vec<(ReportId, &[u8])> = rows
                .iter()
                .map(|r| {
                    (
                        r.report_id,
                        if role == Role::A {
                            &r.share_a[..]
                        } else {
                            &r.share_b[..]
                        },
                    )
                })
                .collect();
            let name = StagedLayout::part_name(&batch_id, part, job.output_format);
            let mut out = job.layout.server(role).writer(&name);
            write_part(job.output_format, &batch_id, role, &shares, &mut out).unwrap_or_else(|e| {
                fatal(format!("{}/{name}: {e}", job.layout.server(role).url()))
            });
            out.finish().unwrap_or_else(|e| fatal(e));
        }
        bump(
            &mut counters,
            format!("entries/{batch_id}"),
            rows.len() as u64,
        );
        bump(&mut counters, format!("parts/{batch_id}"), 1);
    }
    counters
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
