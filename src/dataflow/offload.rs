//! Storage calls an operator hands to a thread of its own, so that its
//! worker goes on verifying while a part is read or messages are written.
//! Those calls copy bytes in and out of the page cache or wait on the
//! network; done inline they were a tenth of a Prio v1 run (whose shares
//! are large), all of it time the worker's crypto waited for.
//!
//! The operator keeps each call's capability until the call's result is
//! in, so that its frontier, and the driver's probe, still mean "done".

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::thread::JoinHandle;

use timely::dataflow::operators::Capability;
use timely::scheduling::SyncActivator;

use super::Error;
use crate::storage::panic_message;

/// A thread that does an operator's calls one at a time, in order.
pub struct Offload<T, R> {
    requests: Option<mpsc::Sender<T>>,
    results: mpsc::Receiver<Result<R, Error>>,
    /// The capability of each call not yet answered, oldest first.
    waiting: VecDeque<Capability<u64>>,
    thread: Option<JoinHandle<()>>,
}

impl<T: Send + 'static, R: Send + 'static> Offload<T, R> {
    /// Starts the thread `name`; it runs `call` on each request and
    /// activates the operator (`activator`) with each result. A call that
    /// panics gives `Error::WorkerPanicked`, as it would on the worker.
    /// After a call fails, later requests are not run (the run is failing,
    /// and no more of its messages should land) and answer `Error::Skipped`;
    /// results come in order, so the operator keeps the real error first.
    pub fn spawn(
        name: String,
        activator: SyncActivator,
        mut call: impl FnMut(T) -> Result<R, Error> + Send + 'static,
    ) -> Self {
        let (requests, received) = mpsc::channel();
        let (answer, results) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let mut failed = false;
                for request in received {
                    let result = if failed {
                        Err(Error::Skipped)
                    } else {
                        std::panic::catch_unwind(AssertUnwindSafe(|| call(request))).unwrap_or_else(
                            |panic| Err(Error::WorkerPanicked(panic_message(&panic))),
                        )
                    };
                    failed |= result.is_err();
                    // Either end gone means the operator is gone: nobody to tell.
                    if answer.send(result).is_err() || activator.activate().is_err() {
                        break;
                    }
                }
            })
            .expect("a thread for storage calls");
        Offload {
            requests: Some(requests),
            results,
            waiting: VecDeque::new(),
            thread: Some(thread),
        }
    }

    /// Queues `request`; its capability is held until its result is taken.
    pub fn send(&mut self, cap: Capability<u64>, request: T) {
        self.requests
            .as_ref()
            .expect("requests are open until drop")
            .send(request)
            .expect("the storage thread ends only with its operator or its worker");
        self.waiting.push_back(cap);
    }

    /// The results that are in, in request order, each with its call's capability.
    pub fn ready(&mut self) -> impl Iterator<Item = (Capability<u64>, Result<R, Error>)> + '_ {
        let waiting = &mut self.waiting;
        self.results.try_iter().map(move |result| {
            let cap = waiting.pop_front().expect("one capability per request");
            (cap, result)
        })
    }
}

impl<T, R> Drop for Offload<T, R> {
    /// Closes the requests and waits for the thread to finish the ones
    /// queued (none, once the dataflow is complete), so that nothing it
    /// holds (the job, a half-written message) outlives the dataflow.
    fn drop(&mut self) {
        self.requests.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
