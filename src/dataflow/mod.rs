//! All timely code: cluster configuration and the jobs' dataflows. Workers
//! build identical dataflows and split work deterministically, so the same
//! input gives the same output for any number of workers or processes.

mod offload;
pub mod process;
pub mod stage;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex, PoisonError};

use crate::storage::input::UnreadableFile;
use crate::storage::location::StorageError;
use crate::wire::protocol::Step;
use crate::wire::vdaf::VdafUseError;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{
    Exchange as ExchangePact, ParallelizationContract, Pipeline,
};
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Input, Operator, Probe};
use timely::dataflow::{InputHandleVec, ProbeHandle, StreamVec};
use timely::worker::Worker;

use std::hash::Hasher;

/// How a job's work goes, for whoever shows it (the cli's progress
/// display). Every worker of a process calls it, from its own thread; the
/// amounts are this process's.
pub trait Progress: Send + Sync {
    /// The job enters `phase`. Every worker says so; the first call counts.
    fn phase(&self, phase: &'static str);
    /// A worker of this process has done its part of `phase`; the phase is
    /// over when every one of them has said so.
    fn phase_done(&self, phase: &'static str);
    /// A worker of this process will do `units` more of the phase's work
    /// (input bytes, parts).
    fn expect(&self, units: u64);
    /// A worker of this process did `units` of it, covering `records`
    /// records (pings, reports).
    fn advance(&self, units: u64, records: u64);
}

/// Nobody watching (an embedding program, a test).
impl Progress for () {
    fn phase(&self, _: &'static str) {}
    fn phase_done(&self, _: &'static str) {}
    fn expect(&self, _: u64) {}
    fn advance(&self, _: u64, _: u64) {}
}

/// How the job is spread: threads per process, and optionally several
/// processes (on one or many machines) that find each other through a hostfile.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// Worker threads per process.
    pub workers: usize,
    /// Number of processes in the cluster.
    pub processes: usize,
    /// This process's index, from 0 to `processes - 1`.
    pub process: usize,
    /// One `host:port` per line, in process order; without it, processes
    /// listen on 127.0.0.1:2101, 2102, ...
    pub hostfile: Option<PathBuf>,
}

/// Why a job stopped. Bad records are never errors (they are counted);
/// these are faults that leave the job unable to do its work.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("local spill file (see --spill-dir): {0}")]
    Spill(std::io::Error),
    #[error("{0}")]
    Cluster(String),
    #[error("{0}\n(pass --skip-unreadable to count such files and go on)")]
    UnreadableInput(#[from] UnreadableFile),
    #[error(
        "no input files for {date} under {url} (looked for DATE/... of the sink layout and \
         .ndjson, .ndjson.gz, .parquet, .avro files); found {found}"
    )]
    NoInput {
        url: String,
        date: String,
        found: String,
    },
    #[error(
        "no report was staged for {date}: {pings} pings read, records rejected: [{rejected}]; \
         check --date and DATA_CONFIG's batch ids, or pass --allow-empty to mark the date \
         staged with nothing in it"
    )]
    NothingStaged {
        date: String,
        pings: u64,
        rejected: String,
    },
    /// Another worker's error, as it reached this one.
    #[error("{0}")]
    Remote(String),
    #[error("{marker} is missing: stage this date into the server's private bucket first (stage --output-a/--output-b)")]
    NotStaged { marker: String },
    #[error("{marker} is missing: run verify1 for this date first")]
    Verify1Missing { marker: String },
    #[error(
        "the peer's {step} never arrived: {marker} is still missing after {retries} retries; \
         check that the other server is running this date and writes to this server's inbox \
         (raise RETRY_LIMIT / RETRY_DELAY to wait longer)"
    )]
    PeerTimeout {
        step: Step,
        marker: String,
        retries: u32,
    },
    #[error(
        "{part}: {what}; this server's stored data for the date changed since it was written. \
         Reset both servers for this date (prio-processor cleanup) and rerun"
    )]
    StoredDataChanged { part: String, what: String },
    #[error("{what}: {source}")]
    Vdaf { what: String, source: VdafUseError },
    #[error("the servers disagree, nothing was done: {0}")]
    Disagreement(String),
    #[error("a worker stopped unexpectedly: {0}")]
    WorkerPanicked(String),
    /// A storage call not made because an earlier one failed (that error is the one raised).
    #[error("skipped: an earlier storage call of this worker failed")]
    Skipped,
}

impl Error {
    /// A VDAF error about `what`, for `map_err`.
    pub fn vdaf(what: String) -> impl FnOnce(VdafUseError) -> Error {
        move |source| Error::Vdaf { what, source }
    }
}

/// A spill file's result as a job error.
pub fn on_disk<T>(result: std::io::Result<T>) -> Result<T, Error> {
    result.map_err(Error::Spill)
}

impl Cluster {
    /// Builds timely's configuration from our own flags (timely's `-h` would clash with `--help`).
    pub fn timely_config(&self) -> Result<timely::Config, Error> {
        if self.workers == 0 {
            return Err(Error::Cluster("--workers must be at least 1".into()));
        }
        if self.processes == 0 || self.process >= self.processes {
            return Err(Error::Cluster(format!(
                "--process must be between 0 and {} (--processes {})",
                self.processes.saturating_sub(1),
                self.processes
            )));
        }
        let communication = if self.processes == 1 {
            if self.workers == 1 {
                timely::CommunicationConfig::Thread
            } else {
                timely::CommunicationConfig::Process(self.workers)
            }
        } else {
            let addresses = match &self.hostfile {
                Some(path) => {
                    let text = std::fs::read_to_string(path).map_err(|e| {
                        Error::Cluster(format!("reading hostfile {}: {e}", path.display()))
                    })?;
                    let hosts: Vec<String> = text
                        .lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty() && !l.starts_with('#'))
                        .map(str::to_string)
                        .collect();
                    if hosts.len() != self.processes {
                        return Err(Error::Cluster(format!(
                            "hostfile {} lists {} hosts, --processes is {}",
                            path.display(),
                            hosts.len(),
                            self.processes
                        )));
                    }
                    hosts
                }
                None => (0..self.processes)
                    .map(|i| format!("127.0.0.1:{}", 2101 + i))
                    .collect(),
            };
            timely::CommunicationConfig::Cluster {
                threads: self.workers,
                process: self.process,
                addresses,
                report: false,
                zerocopy: false,
            }
        };
        Ok(timely::Config {
            communication,
            worker: timely::WorkerConfig::default(),
        })
    }
}

/// Runs `work` on every worker of a timely cluster and returns the first
/// local worker's result (every worker computes the same global answer).
///
/// timely is fail-stop: a worker that leaves its dataflows early would leave
/// the others waiting for it forever. So a worker that fails hands its
/// error to this thread and parks, and the first error returns at once;
/// the caller then ends the process, which ends the parked and waiting
/// workers with it (and, in a cluster, the other processes see it go).
pub fn execute<J, T>(
    job: J,
    cluster: &Cluster,
    work: fn(&mut Worker, &Arc<J>) -> Result<T, Error>,
) -> Result<T, Error>
where
    J: Send + Sync + 'static,
    T: Send + 'static,
{
    let config = cluster.timely_config()?;
    let job = Arc::new(job);
    let (report, reports) = std::sync::mpsc::channel::<(usize, Result<T, Error>)>();
    let report = Mutex::new(report);
    let guards = timely::execute(config, move |worker| {
        let index = worker.index();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(worker, &job)))
            .unwrap_or_else(|panic| {
                Err(Error::WorkerPanicked(crate::storage::panic_message(&panic)))
            });
        let failed = result.is_err();
        let sender = report
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let _ = sender.send((index, result));
        if failed {
            loop {
                std::thread::park();
            }
        }
    })
    .map_err(Error::Cluster)?;
    let local = cluster.workers;
    let mut results = Vec::with_capacity(local);
    while results.len() < local {
        match reports.recv() {
            Ok((_, Err(e))) => {
                // Joining would wait for workers that wait for the failed one.
                std::mem::forget(guards);
                return Err(e);
            }
            Ok((index, Ok(value))) => results.push((index, value)),
            Err(_) => break,
        }
    }
    for result in guards.join() {
        result.map_err(Error::WorkerPanicked)?;
    }
    results.sort_by_key(|(index, _)| *index);
    results
        .into_iter()
        .next()
        .map(|(_, value)| value)
        .ok_or_else(|| Error::Cluster("no workers ran".into()))
}

/// A hash that is the same in every process and run, for routing records to workers.
pub fn route_hash(parts: &[&[u8]]) -> u64 {
    // FNV-1a, then a final mix so that low bits are well spread.
    let mut h = FnvHasher(0xcbf2_9ce4_8422_2325);
    for p in parts {
        h.write(p);
        h.write(&[0xff]);
    }
    let mut x = h.finish();
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x
}

struct FnvHasher(u64);

impl Hasher for FnvHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// Counts that workers keep apart and then add up.
pub trait Merge: timely::ExchangeData + Clone + Default {
    fn absorb(&mut self, other: Self);
}

impl<K: Ord + timely::ExchangeData + Clone> Merge for BTreeMap<K, u64> {
    fn absorb(&mut self, other: Self) {
        for (k, v) in other {
            *self.entry(k).or_default() += v;
        }
    }
}

/// Feeds every record of `stream`, routed by `pact`, to `consume` on the
/// receiving worker; `probe` completes once every record was consumed.
fn consume_into<'s, D, P>(
    stream: StreamVec<'s, u64, D>,
    pact: P,
    name: &str,
    probe: &ProbeHandle<u64>,
    mut consume: impl FnMut(D) + 'static,
) where
    D: 'static,
    P: ParallelizationContract<u64, Vec<D>>,
{
    stream
        .unary::<CapacityContainerBuilder<Vec<()>>, _, _, _>(pact, name, move |_, _| {
            move |input, _output| {
                input.for_each(|_, data| data.drain(..).for_each(&mut consume));
            }
        })
        .probe_with(probe);
}

/// The sending side of an exchange: records go to the worker that `route`
/// picks (`route % peers`), which hands each to its `deliver`. Every worker
/// builds the exchange, sends what it has, and waits for everyone's records
/// to be delivered.
pub struct Exchange<D: timely::ExchangeData + Clone> {
    input: InputHandleVec<u64, D>,
    probe: ProbeHandle<u64>,
}

impl<D: timely::ExchangeData + Clone> Exchange<D> {
    pub fn new(
        worker: &mut Worker,
        name: &str,
        route: impl Fn(&D) -> u64 + 'static,
        deliver: impl FnMut(D) + 'static,
    ) -> Self {
        let mut input = InputHandleVec::new();
        let probe = ProbeHandle::new();
        worker.dataflow::<u64, _, _>(|scope| {
            consume_into(
                scope.input_from(&mut input),
                ExchangePact::new(route),
                name,
                &probe,
                deliver,
            );
        });
        Exchange { input, probe }
    }

    pub fn send(&mut self, record: D) {
        self.input.send(record);
    }

    /// Closes this worker's side and steps the worker until every worker's
    /// records were delivered.
    pub fn close_and_wait(self, worker: &mut Worker) {
        drop(self.input);
        step_until(worker, || self.probe.done());
    }
}

/// The first error an operator met. An operator cannot return one, so it
/// keeps it here and stops working; the loop that steps the worker raises
/// it (once), and the worker's job ends with it.
#[derive(Clone, Default)]
pub struct Failure(Rc<RefCell<Option<Error>>>);

impl Failure {
    /// `result`'s value, or `None` after keeping its error (the first one
    /// kept stays).
    pub fn keep<T>(&self, result: Result<T, Error>) -> Option<T> {
        result
            .map_err(|e| {
                self.0.borrow_mut().get_or_insert(e);
            })
            .ok()
    }

    pub fn failed(&self) -> bool {
        self.0.borrow().is_some()
    }

    /// Steps the worker until `done`, or raises the error an operator kept.
    pub fn step_until(&self, worker: &mut Worker, done: impl Fn() -> bool) -> Result<(), Error> {
        step_until(worker, || self.failed() || done());
        self.0.borrow_mut().take().map_or(Ok(()), Err)
    }
}

/// Steps the worker (parking it when nothing is scheduled) until `done`.
fn step_until(worker: &mut Worker, done: impl Fn() -> bool) {
    while !done() {
        worker.step_or_park(None);
    }
}

/// Every worker gets the records that all workers pass, in arrival order.
fn broadcast<D: timely::ExchangeData + Clone>(
    worker: &mut Worker,
    records: impl IntoIterator<Item = D>,
) -> Vec<D> {
    collect(worker, records, true)
}

/// Worker 0 gets the records that all workers pass, in arrival order; the
/// others get none.
pub fn gather_at_first<D: timely::ExchangeData + Clone>(
    worker: &mut Worker,
    records: impl IntoIterator<Item = D>,
) -> Vec<D> {
    collect(worker, records, false)
}

/// Passes every worker's records to every worker (`everywhere`) or to
/// worker 0, and steps until all of them arrived.
fn collect<D: timely::ExchangeData + Clone>(
    worker: &mut Worker,
    records: impl IntoIterator<Item = D>,
    everywhere: bool,
) -> Vec<D> {
    let mut input = InputHandleVec::<u64, D>::new();
    let probe = ProbeHandle::<u64>::new();
    let received = Rc::new(RefCell::new(Vec::new()));
    let sink = received.clone();
    let keep = move |record| sink.borrow_mut().push(record);
    worker.dataflow::<u64, _, _>(|scope| {
        let stream = scope.input_from(&mut input);
        if everywhere {
            consume_into(stream.broadcast(), Pipeline, "Broadcast", &probe, keep);
        } else {
            consume_into(stream, ExchangePact::new(|_| 0), "Gather", &probe, keep);
        }
    });
    for record in records {
        input.send(record);
    }
    input.close();
    step_until(worker, || probe.done());
    received.take()
}

/// Adds up counts across all workers; every worker gets the totals.
pub fn all_reduce<C: Merge>(worker: &mut Worker, local: &C) -> C {
    let mut total = C::default();
    for counts in broadcast(worker, [local.clone()]) {
        total.absorb(counts);
    }
    total
}

/// Every worker gets the records worker 0 passes (the others pass none), in
/// the order passed: one answer that all workers act on alike.
pub fn broadcast_from_first<D: timely::ExchangeData + Clone>(
    worker: &mut Worker,
    records: Vec<D>,
) -> Vec<D> {
    let mine = if worker.index() == 0 {
        records
    } else {
        Vec::new()
    };
    let mut received = broadcast(worker, mine.into_iter().enumerate());
    received.sort_by_key(|(n, _)| *n);
    received.into_iter().map(|(_, record)| record).collect()
}

/// Spreads items over `peers` workers so that each gets about the same total
/// size (files of one dump differ: a sink's last file of each hour is
/// short): largest first, each to the least loaded worker, ties to the lower
/// index. The same sizes always give the same answer: each item's worker.
pub fn spread_by_size(sizes: &[u64], peers: usize) -> Vec<usize> {
    let mut largest_first: Vec<usize> = (0..sizes.len()).collect();
    largest_first.sort_by_key(|&i| (std::cmp::Reverse(sizes[i]), i));
    let mut load = vec![0u64; peers.max(1)];
    let mut owner = vec![0; sizes.len()];
    for i in largest_first {
        let least = (0..load.len())
            .min_by_key(|&w| (load[w], w))
            .expect("at least one worker");
        owner[i] = least;
        load[least] += sizes[i];
    }
    owner
}

#[cfg(test)]
mod tests;
