//! All timely code: cluster configuration and the jobs' dataflows. Workers
//! build identical dataflows and split work deterministically, so the same
//! input gives the same output for any number of workers or processes.

pub mod process;
pub mod stage;

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Mutex, PoisonError};

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{
    Exchange as ExchangePact, ParallelizationContract, Pipeline,
};
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Input, Operator, Probe};
use timely::dataflow::{InputHandleVec, ProbeHandle, StreamVec};
use timely::worker::Worker;

use std::hash::Hasher;

/// How the job is spread: threads per process, and optionally several
/// processes (on one or many machines) that find each other through a hostfile.
#[derive(clap::Args, Debug, Clone)]
pub struct ClusterArgs {
    /// Worker threads per process.
    #[arg(long, short = 'w', default_value_t = 1, env = "WORKERS")]
    pub workers: usize,
    /// Number of processes in the cluster.
    #[arg(long, default_value_t = 1)]
    pub processes: usize,
    /// This process's index, from 0 to --processes - 1.
    #[arg(long, default_value_t = 0)]
    pub process: usize,
    /// File with one `host:port` per line, in process order. Without it,
    /// processes listen on 127.0.0.1:2101, 2102, ...
    #[arg(long, value_name = "FILE")]
    pub hostfile: Option<std::path::PathBuf>,
}

impl ClusterArgs {
    /// Builds timely's configuration from our own flags (timely's `-h` would clash with `--help`).
    pub fn timely_config(&self) -> Result<timely::Config, String> {
        if self.workers == 0 {
            return Err("--workers must be at least 1".into());
        }
        if self.processes == 0 || self.process >= self.processes {
            return Err(format!(
                "--process must be between 0 and {} (--processes {})",
                self.processes.saturating_sub(1),
                self.processes
            ));
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
                    let text = std::fs::read_to_string(path)
                        .map_err(|e| format!("reading hostfile {}: {e}", path.display()))?;
                    let hosts: Vec<String> = text
                        .lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty() && !l.starts_with('#'))
                        .map(str::to_string)
                        .collect();
                    if hosts.len() != self.processes {
                        return Err(format!(
                            "hostfile {} lists {} hosts, --processes is {}",
                            path.display(),
                            hosts.len(),
                            self.processes
                        ));
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
pub fn execute<J, T>(
    job: J,
    config: timely::Config,
    work: fn(&mut Worker, &J) -> T,
) -> Result<T, String>
where
    J: Send + Sync + 'static,
    T: Send + 'static,
{
    let job = std::sync::Arc::new(job);
    let guards = timely::execute(config, move |worker| work(worker, &job))?;
    let mut results = guards.join().into_iter();
    let first = results.next().ok_or("no workers ran")??;
    for other in results {
        other?;
    }
    Ok(first)
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

/// Local scratch directories (spill files, which can be as large as the
/// input) that `fatal` deletes: it exits without running destructors.
static SCRATCH_DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Deletes `dir` if the job stops on a fault; on success the caller deletes it.
pub fn remove_on_fatal(dir: PathBuf) {
    SCRATCH_DIRS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(dir);
}

/// Stops the whole job on a real fault. timely is fail-stop: a worker that
/// leaves its dataflows early would leave the others waiting forever.
pub fn fatal(err: impl std::fmt::Display) -> ! {
    // Held until the process is gone: when several workers fail alike (all
    // see the same listing), one reports and exits, and the others wait.
    let dirs = SCRATCH_DIRS.lock().unwrap_or_else(PoisonError::into_inner);
    eprintln!("error: {err}");
    for dir in dirs.iter() {
        let _ = std::fs::remove_dir_all(dir);
    }
    std::process::exit(crate::exit::FAILURE.into())
}

/// Named counts, summed across workers: `pings_read`, `rejected/<reason>`,
/// `entries/<batch id>`, ...
pub type Counters = BTreeMap<String, u64>;

pub fn bump(counters: &mut Counters, key: impl Into<String>, by: u64) {
    *counters.entry(key.into()).or_default() += by;
}

/// Feeds every record of `stream`, routed by `pact`, to `consume` on the
/// receiving worker; `probe` completes once every record was consumed.
pub fn consume_into<'s, D, P>(
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

/// Records sent to the worker that `route` picks (`route % peers`), where
/// they wait in arrival order until taken. Every worker builds the channel;
/// each closes its sending side when it has sent everything.
pub struct Channel<D: Clone + 'static> {
    input: Option<InputHandleVec<u64, D>>,
    probe: ProbeHandle<u64>,
    received: Rc<RefCell<VecDeque<D>>>,
}

impl<D: timely::ExchangeData + Clone> Channel<D> {
    pub fn new(worker: &mut Worker, name: &str, route: impl Fn(&D) -> u64 + 'static) -> Self {
        let mut input = InputHandleVec::new();
        let probe = ProbeHandle::new();
        let received = Rc::new(RefCell::new(VecDeque::new()));
        let sink = received.clone();
        worker.dataflow::<u64, _, _>(|scope| {
            consume_into(
                scope.input_from(&mut input),
                ExchangePact::new(route),
                name,
                &probe,
                move |record| sink.borrow_mut().push_back(record),
            );
        });
        Channel {
            input: Some(input),
            probe,
            received,
        }
    }

    /// Sends one record and lets it go at once: records here are large (a
    /// slice of a part), and the receiver should not wait for more. Closing
    /// the record's epoch is what makes the exchange deliver its buffers.
    pub fn send(&mut self, record: D) {
        let input = self.input.as_mut().expect("send on a closed channel");
        input.send(record);
        let next = input.time() + 1;
        input.advance_to(next);
    }

    /// The oldest record that arrived here and was not taken yet.
    pub fn take(&self) -> Option<D> {
        self.received.borrow_mut().pop_front()
    }

    /// Ends this worker's sending side.
    pub fn close(&mut self) {
        self.input.take();
    }

    pub fn is_closed(&self) -> bool {
        self.input.is_none()
    }

    /// Every worker closed its side and everything sent here has arrived
    /// (it may still wait to be taken).
    pub fn delivered(&self) -> bool {
        self.probe.done()
    }
}

/// Steps `worker` until `probe` is done. A worker with nothing to do parks
/// until a message arrives instead of spinning, leaving the core to the
/// workers still busy and to the storage I/O threads.
pub fn run_until_done(worker: &mut Worker, probe: &ProbeHandle<u64>) {
    while !probe.done() {
        worker.step_or_park(None);
    }
}

/// Every worker gets the records that all workers pass, in arrival order.
fn broadcast<D: timely::ExchangeData + Clone>(
    worker: &mut Worker,
    records: impl IntoIterator<Item = D>,
) -> Vec<D> {
    let mut input = InputHandleVec::<u64, D>::new();
    let probe = ProbeHandle::<u64>::new();
    let received = Rc::new(RefCell::new(Vec::new()));
    let sink = received.clone();
    worker.dataflow::<u64, _, _>(|scope| {
        let stream = scope.input_from(&mut input).broadcast();
        consume_into(stream, Pipeline, "Broadcast", &probe, move |record| {
            sink.borrow_mut().push(record)
        });
    });
    for record in records {
        input.send(record);
    }
    input.close();
    run_until_done(worker, &probe);
    received.take()
}

/// Sums counters across all workers; every worker gets the totals.
pub fn all_reduce(worker: &mut Worker, local: &Counters) -> Counters {
    let mut total = Counters::new();
    for (k, v) in broadcast(worker, local.clone()) {
        *total.entry(k).or_default() += v;
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
mod tests {
    use super::spread_by_size;

    #[test]
    fn items_spread_by_size_balance_the_load_whatever_their_order() {
        // Alternating long and short files: by index, one worker would get every long one.
        let sizes = [26, 17, 26, 17, 26, 17, 26, 17];
        let owner = spread_by_size(&sizes, 2);
        let load = |w| -> u64 { (0..8).filter(|&i| owner[i] == w).map(|i| sizes[i]).sum() };
        assert_eq!((load(0), load(1)), (86, 86));
        assert_eq!(spread_by_size(&sizes, 2), owner, "deterministic");
        assert_eq!(spread_by_size(&sizes, 1), vec![0; 8]);
        assert_eq!(spread_by_size(&[5, 5, 5], 4), vec![0, 1, 2]);
        assert!(spread_by_size(&[], 3).is_empty());
    }
}
