use super::*;

fn two_workers() -> Cluster {
    Cluster {
        workers: 2,
        processes: 1,
        process: 0,
        hostfile: None,
    }
}

/// Worker 1 fails while worker 0 waits for it in a broadcast, which never ends.
fn one_fails(worker: &mut Worker, _: &Arc<()>) -> Result<u64, Error> {
    if worker.index() == 1 {
        return Err(Error::Remote("worker 1 failed".into()));
    }
    Ok(all_reduce(worker, &BTreeMap::from([("n".to_string(), 1u64)]))["n"])
}

fn one_panics(worker: &mut Worker, _: &Arc<()>) -> Result<u64, Error> {
    if worker.index() == 1 {
        panic!("worker 1 panicked");
    }
    Ok(all_reduce(worker, &BTreeMap::from([("n".to_string(), 1u64)]))["n"])
}

fn all_count(worker: &mut Worker, _: &Arc<()>) -> Result<u64, Error> {
    Ok(all_reduce(worker, &BTreeMap::from([("n".to_string(), 1u64)]))["n"])
}

#[test]
fn a_failing_worker_ends_the_job_with_its_error_while_the_others_wait_for_it() {
    let err = execute((), &two_workers(), one_fails).unwrap_err();
    assert_eq!(err.to_string(), "worker 1 failed");
    let err = execute((), &two_workers(), one_panics).unwrap_err();
    assert!(
        matches!(&err, Error::WorkerPanicked(m) if m.contains("worker 1 panicked")),
        "{err}"
    );
    assert_eq!(execute((), &two_workers(), all_count).unwrap(), 2);
}

#[test]
fn an_operators_first_error_is_raised_by_the_loop_that_steps_the_worker() {
    timely::execute_directly(|worker| {
        let failure = Failure::default();
        let mut input = InputHandleVec::<u64, u32>::new();
        let probe = ProbeHandle::new();
        let keep = failure.clone();
        worker.dataflow::<u64, _, _>(|scope| {
            let stream = scope.input_from(&mut input);
            consume_into(stream, Pipeline, "FailsOnThree", &probe, move |n| {
                keep.keep(if n >= 3 {
                    Err(Error::Remote(format!("record {n}")))
                } else {
                    Ok(())
                });
            })
        });
        for n in 0..5 {
            input.send(n);
        }
        drop(input);
        let error = failure.step_until(worker, || probe.done()).unwrap_err();
        assert_eq!(error.to_string(), "record 3");
        assert!(!failure.failed(), "raised once");
    });
}

#[test]
fn cluster_flags_that_cannot_work_are_errors() {
    let bad = Cluster {
        workers: 0,
        ..two_workers()
    };
    assert!(bad
        .timely_config()
        .unwrap_err()
        .to_string()
        .contains("--workers"));
    let bad = Cluster {
        processes: 2,
        process: 2,
        ..two_workers()
    };
    assert!(bad
        .timely_config()
        .unwrap_err()
        .to_string()
        .contains("--process"));
}

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
